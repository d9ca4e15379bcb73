//! jobqueue (placeholder)
