//! Embedded migrations, the schema version check, and the lock that keeps
//! processes starting together from migrating at once.
//!
//! The migrations in `migrations/` are compiled into the binary. Connecting
//! takes a session advisory lock for the store's schema, creates the schema
//! if it is missing, checks what the database records, applies the
//! migrations it lacks, and lets the lock go. A database that records a
//! migration this build does not know was written by a newer version and is
//! refused before anything is written to it; a schema that already has
//! tables jobqueue did not create belongs to something else and is refused
//! too.
//!
//! diesel's migration runner is synchronous: it runs on a blocking thread
//! over diesel-async's [`AsyncConnectionWrapper`], at start-up only.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use jobqueue_core::{ErrorKind, StoreError};

use crate::error::db_err;

/// The migrations of this build, embedded from `migrations/`.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The table in which diesel records applied migrations.
const MIGRATIONS_TABLE: &str = "__diesel_schema_migrations";

/// The first key of the store's advisory locks ("jq"); the second is a hash
/// of the schema's name.
pub(crate) const LOCK_CLASS: i32 = 0x6a71;

/// A connection usable by diesel's synchronous migration runner.
pub(crate) type SyncConn = AsyncConnectionWrapper<AsyncPgConnection>;

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The migration versions this build knows, as diesel records them.
fn known_versions() -> Result<Vec<String>, StoreError> {
    let list = MigrationSource::<Pg>::migrations(&MIGRATIONS).map_err(|e| {
        StoreError::backend(ErrorKind::Internal, format!("embedded migrations: {e}"))
    })?;
    Ok(list
        .iter()
        .map(|m| m.name().version().to_string())
        .collect())
}

/// Fails with [`ErrorKind::SchemaTooNew`] when the schema records a
/// migration this build does not know, and with [`ErrorKind::Incompatible`]
/// when it has tables but no record of jobqueue's migrations. Reads only.
fn check_version(conn: &mut SyncConn) -> Result<(), StoreError> {
    let recorded: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = $1",
    )
    .bind::<Text, _>(MIGRATIONS_TABLE)
    .get_result(conn)
    .map_err(db_err)?;
    if recorded.n == 0 {
        let foreign: Vec<Name> = diesel::sql_query(
            "SELECT table_name::text AS name FROM information_schema.tables \
             WHERE table_schema = current_schema() ORDER BY table_name",
        )
        .load(conn)
        .map_err(db_err)?;
        if foreign.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = foreign.into_iter().map(|n| n.name).collect();
        return Err(StoreError::backend(
            ErrorKind::Incompatible,
            format!(
                "the schema already has tables that jobqueue did not create ({}): it belongs \
                 to something else; nothing was changed (give the store a schema of its own)",
                names.join(", ")
            ),
        ));
    }
    let applied: Vec<Name> = diesel::sql_query(format!(
        "SELECT version::text AS name FROM {MIGRATIONS_TABLE} ORDER BY version"
    ))
    .load(conn)
    .map_err(db_err)?;
    let known = known_versions()?;
    let unknown: Vec<String> = applied
        .into_iter()
        .map(|v| v.name)
        .filter(|v| !known.contains(v))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(StoreError::backend(
            ErrorKind::SchemaTooNew,
            format!(
                "the database has schema migrations this build does not know ({}): it was \
                 written by a newer version of jobqueue; nothing was changed",
                unknown.join(", ")
            ),
        ))
    }
}

/// Selects (and creates) `schema`, then checks the version and applies the
/// pending migrations, all under the schema's advisory lock.
pub(crate) fn migrate(conn: &mut SyncConn, schema: Option<&str>) -> Result<(), StoreError> {
    // The name is a checked identifier (see `PostgresOptions::schema`), so it
    // goes into the SQL as it is.
    let key = match schema {
        Some(s) => format!("hashtext('{s}')"),
        None => "hashtext(coalesce(current_schema(), ''))".to_owned(),
    };
    conn.batch_execute(&format!("SELECT pg_advisory_lock({LOCK_CLASS}, {key})"))
        .map_err(db_err)?;
    let result = migrate_locked(conn, schema);
    let unlocked = conn
        .batch_execute(&format!("SELECT pg_advisory_unlock({LOCK_CLASS}, {key})"))
        .map_err(db_err);
    result.and(unlocked)
}

fn migrate_locked(conn: &mut SyncConn, schema: Option<&str>) -> Result<(), StoreError> {
    if let Some(s) = schema {
        conn.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; SET search_path TO {s}"
        ))
        .map_err(db_err)?;
    }
    let current: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM (SELECT current_schema() AS s) c WHERE c.s IS NOT NULL",
    )
    .get_result(conn)
    .map_err(db_err)?;
    if current.n == 0 {
        return Err(StoreError::Invalid(
            "the connection's search_path names no existing schema to hold the tables; \
             give the store a schema (PostgresOptions::schema)"
                .to_owned(),
        ));
    }
    check_version(conn)?;
    conn.run_pending_migrations(MIGRATIONS).map_err(|e| {
        match e.downcast::<diesel::result::Error>() {
            Ok(db) => db_err(*db),
            Err(other) => StoreError::backend(
                ErrorKind::Internal,
                format!("applying schema migrations: {other}"),
            ),
        }
    })?;
    Ok(())
}
