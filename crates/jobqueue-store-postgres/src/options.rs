//! [`PostgresOptions`]: how [`PostgresStore::connect`](crate::PostgresStore::connect)
//! sets up its pool, schema and clock. Checked when the store connects: a
//! bad setting is an `Invalid` error, never a panic.

use std::sync::Arc;
use std::time::Duration;

use jobqueue_core::{Clock, StoreError, SystemClock};

/// The most characters PostgreSQL keeps of an identifier.
const MAX_IDENTIFIER: usize = 63;

/// How to connect a [`PostgresStore`](crate::PostgresStore).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Where the store reads the time. Every process sharing a database
    /// should read a synchronised clock (see the crate docs).
    pub clock: Arc<dyn Clock>,
    /// The schema that holds the store's tables (created if missing); `None`
    /// uses the connection's default `search_path` (usually `public`).
    pub schema: Option<String>,
    /// The most connections the pool opens (at least 1).
    pub max_connections: usize,
    /// How long a call waits for a free connection before it fails with
    /// `Busy`.
    pub wait_timeout: Duration,
    /// How long opening a new connection may take before it fails with `Io`.
    pub connect_timeout: Duration,
    /// The `application_name` of the store's connections, which
    /// `pg_stat_activity` shows.
    pub application_name: String,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            schema: None,
            max_connections: 10,
            wait_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            application_name: "jobqueue".to_owned(),
        }
    }
}

impl PostgresOptions {
    /// Reads the time from `clock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Keeps the tables in `schema` (a lower-case SQL identifier: letters,
    /// digits and `_`, not starting with a digit, at most 63 characters).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Opens at most `n` connections.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Waits at most `timeout` for a free connection.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// Gives a new connection at most `timeout` to open.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Names the store's connections `name` in `pg_stat_activity`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Checks every setting; the error says which one is wrong.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if let Some(schema) = &self.schema {
            check_schema(schema).map_err(StoreError::Invalid)?;
        }
        if self.application_name.contains('\0') {
            return Err(StoreError::Invalid(
                "application_name must not contain the NUL character".to_owned(),
            ));
        }
        if self.max_connections == 0 {
            return Err(StoreError::Invalid(
                "max_connections must be at least 1".to_owned(),
            ));
        }
        for (name, d) in [
            ("wait_timeout", self.wait_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d.is_zero() {
                return Err(StoreError::Invalid(format!(
                    "{name} must be longer than zero"
                )));
            }
        }
        Ok(())
    }
}

/// Checks a schema name: only names that need no quoting, so it can be put
/// into SQL text as it is.
fn check_schema(schema: &str) -> Result<(), String> {
    let valid_start = schema
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let valid_rest = schema
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid_start || !valid_rest || schema.len() > MAX_IDENTIFIER {
        return Err(format!(
            "schema {schema:?} must be a lower-case SQL identifier: letters, digits and `_`, \
             not starting with a digit, at most {MAX_IDENTIFIER} characters"
        ));
    }
    if schema.starts_with("pg_") {
        return Err(format!(
            "schema {schema:?}: names starting with `pg_` are reserved by PostgreSQL"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(PostgresOptions::default().validate().is_ok());
        for bad in ["", "Jobs", "1jobs", "jobs-x", "pg_jobs", &"j".repeat(64)] {
            let e = PostgresOptions::default().schema(bad).validate();
            assert!(e.is_err(), "{bad:?} accepted");
        }
        assert!(
            PostgresOptions::default()
                .schema("jobqueue_1")
                .validate()
                .is_ok()
        );
        assert!(
            PostgresOptions::default()
                .max_connections(0)
                .validate()
                .is_err()
        );
        assert!(
            PostgresOptions::default()
                .wait_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
    }
}
