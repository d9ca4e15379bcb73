//! Embedded migrations and the schema version check run on every open.
//!
//! The migrations in `migrations/` are compiled into the binary. Opening a
//! database applies the ones it lacks; a database that records a migration
//! this build does not know was written by a newer version, and is refused
//! before anything is written to it.

use diesel::migration::MigrationSource;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use jobqueue_core::{ErrorKind, StoreError};

use crate::error::db_err;

/// The migrations of this build, embedded from `migrations/`.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The table in which diesel records applied migrations.
const MIGRATIONS_TABLE: &str = "__diesel_schema_migrations";

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The migration versions this build knows, as diesel records them.
fn known_versions() -> Result<Vec<String>, StoreError> {
    let list = MigrationSource::<Sqlite>::migrations(&MIGRATIONS).map_err(|e| {
        StoreError::backend(ErrorKind::Internal, format!("embedded migrations: {e}"))
    })?;
    Ok(list
        .iter()
        .map(|m| m.name().version().to_string())
        .collect())
}

/// Fails with [`ErrorKind::SchemaTooNew`] when the database records a
/// migration this build does not know, and with [`ErrorKind::Incompatible`]
/// when it has tables but no record of jobqueue's migrations (another
/// program's database, say one with its own `jobs` table). Reads only.
pub(crate) fn check_version(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let tables: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?",
    )
    .bind::<Text, _>(MIGRATIONS_TABLE)
    .get_result(conn)
    .map_err(db_err)?;
    if tables.n == 0 {
        // Never migrated by jobqueue: it must be empty, or it belongs to
        // something else and is left alone.
        let foreign: Vec<Version> = diesel::sql_query(
            "SELECT name AS version FROM sqlite_master \
             WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .load(conn)
        .map_err(db_err)?;
        if foreign.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = foreign.into_iter().map(|v| v.version).collect();
        return Err(StoreError::backend(
            ErrorKind::Incompatible,
            format!(
                "the database already has tables that jobqueue did not create ({}): \
                 it belongs to something else; nothing was changed",
                names.join(", ")
            ),
        ));
    }
    let applied: Vec<Version> = diesel::sql_query(format!(
        "SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version"
    ))
    .load(conn)
    .map_err(db_err)?;
    let known = known_versions()?;
    let unknown: Vec<String> = applied
        .into_iter()
        .map(|v| v.version)
        .filter(|v| !known.contains(v))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(StoreError::backend(
            ErrorKind::SchemaTooNew,
            format!(
                "the database has schema migrations this build does not know ({}): \
                 it was written by a newer version of jobqueue; nothing was changed",
                unknown.join(", ")
            ),
        ))
    }
}

/// Checks the version, then applies the pending migrations.
pub(crate) fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
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
