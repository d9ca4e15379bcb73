//! Maps diesel, driver and pool failures to [`StoreError`] kinds, from the
//! database's error code, never from message text.
//!
//! diesel hands over PostgreSQL's SQLSTATE as its [`DatabaseErrorKind`]
//! (23505 unique violation, 40001 serialization failure, the other class-23
//! integrity violations, 25006 read-only transaction) plus the constraint
//! name; an error that carries no SQLSTATE at all is one of the connection
//! (the driver could not send or lost the socket). Other codes arrive as
//! `Unknown`: diesel's error information has no accessor for the code
//! itself, so they are `Internal`. The store is built so that the transient
//! ones among them do not arise (see the crate docs: one lock order, so no
//! deadlock; no lock or statement timeouts; bad text refused before it is
//! sent).
//!
//! | failure | kind |
//! |---|---|
//! | 23505 on `jobs_unique_key` | `Duplicate` (the caller looks up the holder) |
//! | other class-23 integrity violations | `Conflict` |
//! | 40001 serialization failure | `Busy` |
//! | 25006 read-only transaction (a standby, a read-only database) | `Io` |
//! | no SQLSTATE: the connection failed or closed mid-statement | `Io` |
//! | the pool has no free connection within its wait timeout | `Busy` |
//! | a new connection cannot be made (refused, authentication, no such database) | `Io` |
//! | a malformed connection URL, a bad option | `Invalid` |
//! | the store was closed | `Closed` |
//! | anything else | `Internal` |

use diesel::ConnectionError;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolError as ManagerError;
use diesel_async::pooled_connection::deadpool::PoolError;
use jobqueue_core::{ErrorKind, StoreError};

/// The unique index that holds unique keys of active jobs.
pub(crate) const UNIQUE_KEY_INDEX: &str = "jobs_unique_key";

/// The unique index that holds period keys, in every state.
pub(crate) const PERIOD_KEY_INDEX: &str = "jobs_period_key";

/// The kind of a diesel query failure.
fn kind_of(e: &DieselError) -> ErrorKind {
    match e {
        DieselError::DatabaseError(kind, _) => match kind {
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::RestrictViolation
            | DatabaseErrorKind::ExclusionViolation => ErrorKind::Conflict,
            DatabaseErrorKind::SerializationFailure => ErrorKind::Busy,
            DatabaseErrorKind::ReadOnlyTransaction
            | DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand => ErrorKind::Io,
            _ => ErrorKind::Internal,
        },
        DieselError::BrokenTransactionManager => ErrorKind::Io,
        _ => ErrorKind::Internal,
    }
}

/// A query failure. A unique-key violation gets the kind `Duplicate`
/// without naming the holder: the operation that hit it looks the holder up
/// and returns a full [`StoreError::Duplicate`] instead.
pub(crate) fn db_err(e: DieselError) -> StoreError {
    let kind = if is_unique_key_violation(&e) || is_period_key_violation(&e) {
        ErrorKind::Duplicate
    } else {
        kind_of(&e)
    };
    let message = match &e {
        DieselError::DatabaseError(_, info) => match info.details() {
            Some(detail) => format!("postgres: {} ({detail})", info.message()),
            None => format!("postgres: {}", info.message()),
        },
        other => format!("postgres: {other}"),
    };
    StoreError::backend(kind, message)
}

/// Whether `e` is the unique-key index refusing a second active holder
/// (SQLSTATE 23505 on [`UNIQUE_KEY_INDEX`]).
pub(crate) fn is_unique_key_violation(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(UNIQUE_KEY_INDEX)
    )
}

/// Whether `e` is the period-key index refusing a second job of a window
/// (SQLSTATE 23505 on [`PERIOD_KEY_INDEX`]).
pub(crate) fn is_period_key_violation(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(PERIOD_KEY_INDEX)
    )
}

/// A failure to make a connection.
pub(crate) fn conn_err(e: &ConnectionError) -> StoreError {
    let (kind, what) = match e {
        ConnectionError::InvalidConnectionUrl(m) => (ErrorKind::Invalid, m.clone()),
        ConnectionError::InvalidCString(n) => (ErrorKind::Invalid, n.to_string()),
        ConnectionError::CouldntSetupConfiguration(inner) => (ErrorKind::Io, db_err_text(inner)),
        other => (ErrorKind::Io, other.to_string()),
    };
    StoreError::backend(kind, format!("cannot connect to postgres: {what}"))
}

fn db_err_text(e: &DieselError) -> String {
    match e {
        DieselError::DatabaseError(_, info) => info.message().to_owned(),
        other => other.to_string(),
    }
}

/// A failure to take a connection from the pool.
pub(crate) fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(_) => StoreError::backend(
            ErrorKind::Busy,
            "postgres: no connection of the pool was free in time",
        ),
        PoolError::Closed => closed(),
        PoolError::Backend(ManagerError::ConnectionError(c)) => conn_err(&c),
        PoolError::Backend(ManagerError::QueryError(q)) => db_err(q),
        other => StoreError::backend(ErrorKind::Io, format!("postgres pool: {other}")),
    }
}

/// A stored value that does not read back.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::backend(
        ErrorKind::Corrupt,
        format!("postgres: bad stored value: {what}"),
    )
}

/// The store has been closed.
pub(crate) fn closed() -> StoreError {
    StoreError::backend(ErrorKind::Closed, "the postgres store has been closed")
}

/// An invariant of the store itself failed.
pub(crate) fn internal(what: impl Into<String>) -> StoreError {
    StoreError::backend(ErrorKind::Internal, what)
}
