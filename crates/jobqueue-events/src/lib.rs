//! jobqueue-events (placeholder)
