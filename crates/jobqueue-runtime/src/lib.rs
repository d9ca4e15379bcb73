//! jobqueue-runtime (placeholder)
