//! jobqueue-store-sqlite (placeholder)
