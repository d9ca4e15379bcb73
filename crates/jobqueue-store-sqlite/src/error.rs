//! Maps diesel and SQLite failures to [`StoreError`] kinds, by code, never
//! by searching the message.
//!
//! diesel reports SQLite's constraint codes as its `DatabaseErrorKind`
//! (unique, foreign key, not-null, check). For every other code it hands
//! over only `sqlite3_errmsg`, and it does not expose the connection handle
//! that `sqlite3_extended_errcode` needs. An error without text of its own
//! has exactly `sqlite3_errstr(code)` as its message, a fixed string per
//! primary result code, so the code is recovered by comparing the whole
//! message with that table ([`PRIMARY_CODES`]). A message that merely
//! contains such words (say "malformed JSON", an ordinary `SQLITE_ERROR`)
//! does not match and is not mistaken for corruption.

use diesel::ConnectionError;
use diesel::result::DatabaseErrorKind;
use jobqueue_core::{ErrorKind, StoreError};

/// `sqlite3_errstr` of the primary result codes the store classifies, with
/// the kind each means. Every extended code of a primary code shares its
/// text (`SQLITE_IOERR_WRITE` reads "disk I/O error").
const PRIMARY_CODES: &[(&str, &str, ErrorKind)] = &[
    ("SQLITE_BUSY", "database is locked", ErrorKind::Busy),
    ("SQLITE_LOCKED", "database table is locked", ErrorKind::Busy),
    (
        "SQLITE_CORRUPT",
        "database disk image is malformed",
        ErrorKind::Corrupt,
    ),
    (
        "SQLITE_NOTADB",
        "file is not a database",
        ErrorKind::Corrupt,
    ),
    ("SQLITE_IOERR", "disk I/O error", ErrorKind::Io),
    ("SQLITE_FULL", "database or disk is full", ErrorKind::Io),
    (
        "SQLITE_READONLY",
        "attempt to write a readonly database",
        ErrorKind::Io,
    ),
    (
        "SQLITE_CANTOPEN",
        "unable to open database file",
        ErrorKind::Io,
    ),
    ("SQLITE_PERM", "access permission denied", ErrorKind::Io),
    ("SQLITE_PROTOCOL", "locking protocol", ErrorKind::Busy),
];

/// SQLite's own texts for corruption found while reading the schema; they
/// carry the object's name, so they are matched by their fixed start.
const CORRUPT_SCHEMA_PREFIXES: &[&str] = &["malformed database schema ("];

/// The kind of a failure whose message is `message` and diesel kind `kind`.
pub(crate) fn kind_of(kind: Option<&DatabaseErrorKind>, message: &str) -> ErrorKind {
    match kind {
        Some(
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation,
        ) => return ErrorKind::Conflict,
        Some(DatabaseErrorKind::ClosedConnection) => return ErrorKind::Closed,
        _ => {}
    }
    if let Some((_, _, kind)) = PRIMARY_CODES.iter().find(|(_, text, _)| *text == message) {
        return *kind;
    }
    if CORRUPT_SCHEMA_PREFIXES
        .iter()
        .any(|p| message.starts_with(p))
    {
        return ErrorKind::Corrupt;
    }
    ErrorKind::Internal
}

/// The kind of a failure with SQLite result code `code` (primary or
/// extended), for statements run through SQLite's own API (see
/// [`crate::raw`]), where the code is at hand: the same kinds as
/// [`kind_of`] gives the same failures through diesel.
pub(crate) fn kind_of_code(code: i32) -> ErrorKind {
    use libsqlite3_sys as ffi;
    match code & 0xff {
        ffi::SQLITE_CONSTRAINT => ErrorKind::Conflict,
        ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED | ffi::SQLITE_PROTOCOL => ErrorKind::Busy,
        ffi::SQLITE_CORRUPT | ffi::SQLITE_NOTADB => ErrorKind::Corrupt,
        ffi::SQLITE_IOERR
        | ffi::SQLITE_FULL
        | ffi::SQLITE_READONLY
        | ffi::SQLITE_CANTOPEN
        | ffi::SQLITE_PERM => ErrorKind::Io,
        _ => ErrorKind::Internal,
    }
}

/// A query failure.
pub(crate) fn db_err(e: diesel::result::Error) -> StoreError {
    match &e {
        diesel::result::Error::DatabaseError(kind, info) => {
            let message = info.message();
            StoreError::backend(kind_of(Some(kind), message), format!("sqlite: {message}"))
        }
        other => StoreError::backend(ErrorKind::Internal, format!("sqlite: {other}")),
    }
}

/// A failure to open a connection. diesel's `ConnectionError` carries
/// SQLite's message (`BadConnection`) or a path problem (`InvalidCString`).
pub(crate) fn conn_err(e: ConnectionError, path: &str) -> StoreError {
    let kind = match &e {
        ConnectionError::BadConnection(message) => match kind_of(None, message) {
            ErrorKind::Internal => ErrorKind::Io,
            k => k,
        },
        ConnectionError::InvalidCString(_) => ErrorKind::Invalid,
        ConnectionError::CouldntSetupConfiguration(inner) => return db_err_clone(inner, path),
        _ => ErrorKind::Io,
    };
    StoreError::backend(kind, format!("cannot open sqlite database {path:?}: {e}"))
}

fn db_err_clone(e: &diesel::result::Error, path: &str) -> StoreError {
    let (kind, message) = match e {
        diesel::result::Error::DatabaseError(kind, info) => (
            kind_of(Some(kind), info.message()),
            info.message().to_owned(),
        ),
        other => (ErrorKind::Io, other.to_string()),
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
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};

    use super::*;

    fn run(conn: &mut SqliteConnection, sql: &str) -> StoreError {
        db_err(conn.batch_execute(sql).unwrap_err())
    }

    #[test]
    fn whole_messages_map_to_kinds() {
        for (code, text, kind) in PRIMARY_CODES {
            assert_eq!(kind_of(None, text), *kind, "{code}");
        }
        assert_eq!(
            kind_of(None, "malformed database schema (jobs) - near x"),
            ErrorKind::Corrupt
        );
        // Words of those messages inside another message mean nothing.
        assert_eq!(kind_of(None, "malformed JSON"), ErrorKind::Internal);
        assert_eq!(
            kind_of(None, "no such table: database is locked"),
            ErrorKind::Internal
        );
    }

    /// A code gives the kind its message gives (the statements run
    /// through SQLite's API are classified by code), extended codes too.
    #[test]
    fn codes_map_to_the_kinds_of_their_messages() {
        use libsqlite3_sys as ffi;
        let codes = [
            ("SQLITE_BUSY", ffi::SQLITE_BUSY),
            ("SQLITE_LOCKED", ffi::SQLITE_LOCKED),
            ("SQLITE_CORRUPT", ffi::SQLITE_CORRUPT),
            ("SQLITE_NOTADB", ffi::SQLITE_NOTADB),
            ("SQLITE_IOERR", ffi::SQLITE_IOERR),
            ("SQLITE_FULL", ffi::SQLITE_FULL),
            ("SQLITE_READONLY", ffi::SQLITE_READONLY),
            ("SQLITE_CANTOPEN", ffi::SQLITE_CANTOPEN),
            ("SQLITE_PERM", ffi::SQLITE_PERM),
            ("SQLITE_PROTOCOL", ffi::SQLITE_PROTOCOL),
        ];
        for (name, _, kind) in PRIMARY_CODES {
            let code = codes.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!(kind_of_code(code), *kind, "{name}");
        }
        assert_eq!(kind_of_code(ffi::SQLITE_IOERR_WRITE), ErrorKind::Io);
        assert_eq!(
            kind_of_code(ffi::SQLITE_CONSTRAINT_UNIQUE),
            ErrorKind::Conflict
        );
        assert_eq!(
            kind_of_code(ffi::SQLITE_CONSTRAINT_TRIGGER),
            ErrorKind::Conflict
        );
        assert_eq!(kind_of_code(ffi::SQLITE_ERROR), ErrorKind::Internal);
    }

    #[test]
    fn real_sqlite_errors_get_their_kind() {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        conn.batch_execute("INSERT INTO t VALUES (1, 'a')").unwrap();
        let e = run(&mut conn, "INSERT INTO t VALUES (1, 'b')");
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        let e = run(&mut conn, "INSERT INTO t VALUES (2, NULL)");
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        // SQLite's JSON functions say "malformed JSON": an ordinary error.
        let e = run(&mut conn, "SELECT json('{')");
        assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
        let e = run(&mut conn, "SELECT * FROM missing");
        assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
    }
}
