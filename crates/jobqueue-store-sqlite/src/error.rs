//! Maps diesel and SQLite failures to [`StoreError`] kinds.
//!
//! diesel's SQLite backend hands over SQLite's message but not its result
//! code, so the kind is read from SQLite's fixed English messages (the text
//! of `sqlite3_errstr` for each primary result code).

use diesel::ConnectionError;
use jobqueue_core::{ErrorKind, StoreError};

/// The kind of a SQLite failure, read from its message.
pub(crate) fn kind_of(message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    if m.contains("database is locked") || m.contains("table is locked") || m.contains("is busy") {
        ErrorKind::Busy
    } else if m.contains("malformed") || m.contains("not a database") || m.contains("corrupt") {
        ErrorKind::Corrupt
    } else if m.contains("unable to open")
        || m.contains("readonly")
        || m.contains("read-only")
        || m.contains("disk is full")
        || m.contains("i/o error")
        || m.contains("no such file")
    {
        ErrorKind::Io
    } else {
        ErrorKind::Internal
    }
}

/// A query failure.
pub(crate) fn db_err(e: diesel::result::Error) -> StoreError {
    let message = match &e {
        diesel::result::Error::DatabaseError(_, info) => info.message().to_owned(),
        other => other.to_string(),
    };
    StoreError::backend(kind_of(&message), format!("sqlite: {message}"))
}

/// A failure to open a connection.
pub(crate) fn conn_err(e: ConnectionError, path: &str) -> StoreError {
    let message = e.to_string();
    let kind = match kind_of(&message) {
        ErrorKind::Internal => ErrorKind::Io,
        k => k,
    };
    StoreError::backend(
        kind,
        format!("cannot open sqlite database {path:?}: {message}"),
    )
}

/// A stored value that does not read back.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::backend(
        ErrorKind::Corrupt,
        format!("sqlite: bad stored value: {what}"),
    )
}

/// The store's threads are gone.
pub(crate) fn closed() -> StoreError {
    StoreError::backend(ErrorKind::Closed, "the sqlite store has shut down")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_messages_map_to_kinds() {
        assert_eq!(kind_of("database is locked"), ErrorKind::Busy);
        assert_eq!(kind_of("database table is locked"), ErrorKind::Busy);
        assert_eq!(
            kind_of("database disk image is malformed"),
            ErrorKind::Corrupt
        );
        assert_eq!(kind_of("file is not a database"), ErrorKind::Corrupt);
        assert_eq!(kind_of("unable to open database file"), ErrorKind::Io);
        assert_eq!(
            kind_of("attempt to write a readonly database"),
            ErrorKind::Io
        );
        assert_eq!(kind_of("database or disk is full"), ErrorKind::Io);
        assert_eq!(kind_of("disk I/O error"), ErrorKind::Io);
        assert_eq!(kind_of("no such table: x"), ErrorKind::Internal);
    }
}
