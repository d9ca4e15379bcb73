//! The test database: its URL, and a fresh schema per test, dropped
//! afterwards, also when the test fails.
//!
//! Without `JOBQUEUE_TEST_POSTGRES_URL` the tests pass after saying, on the
//! terminal (past the test harness's output capture), that they skipped
//! everything; with `CI` set they fail instead, so a CI run that lost its
//! database cannot pass by running nothing.

use std::future::Future;
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Once};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use jobqueue_core::Clock;

use crate::{PostgresOptions, PostgresStore};

/// The variable that names the test database.
pub(crate) const URL_VAR: &str = "JOBQUEUE_TEST_POSTGRES_URL";

/// The test database's URL, or `None` (after saying so) when it is not set.
pub(crate) fn url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{URL_VAR} is not set, and CI is: the PostgreSQL store's tests must run in CI \
                 (.ci/run starts PostgreSQL and sets it)"
            );
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                // Straight to stderr: the harness captures `eprintln!`.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** jobqueue-store-postgres: {URL_VAR} is not set: SKIPPING every \
                     PostgreSQL test (they pass without running). Set it, e.g. \
                     {URL_VAR}=postgres://postgres@127.0.0.1:5432/test ***\n"
                );
            });
            None
        }
    }
}

/// A schema of the test database for one test.
#[derive(Debug, Clone)]
pub(crate) struct Scratch {
    pub(crate) url: String,
    pub(crate) schema: String,
}

impl Scratch {
    fn new(url: String) -> Self {
        let schema = format!("jq_test_{}", uuid::Uuid::now_v7().simple());
        Self { url, schema }
    }

    /// The options of a store in this schema on `clock`.
    pub(crate) fn options(&self, clock: Arc<dyn Clock>) -> PostgresOptions {
        PostgresOptions::default()
            .schema(self.schema.clone())
            .application_name(self.schema.clone())
            .clock(clock)
    }

    /// A store in this schema on `clock` (the first one creates the schema).
    pub(crate) async fn store(&self, clock: Arc<dyn Clock>) -> PostgresStore {
        PostgresStore::connect(&self.url, self.options(clock))
            .await
            .unwrap()
    }

    /// A plain connection with this schema selected.
    pub(crate) async fn connection(&self) -> AsyncPgConnection {
        let mut conn = AsyncPgConnection::establish(&self.url).await.unwrap();
        conn.batch_execute(&format!("SET search_path TO {}", self.schema))
            .await
            .unwrap();
        conn
    }

    async fn drop_schema(&self) {
        match AsyncPgConnection::establish(&self.url).await {
            Ok(mut conn) => {
                let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
                if let Err(e) = conn.batch_execute(&sql).await {
                    let _ = writeln!(std::io::stderr(), "could not drop {}: {e}", self.schema);
                }
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "could not drop {}: {e}", self.schema);
            }
        }
    }
}

/// A runtime like a server's: several worker threads.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `test` in a fresh schema on a runtime of its own, then drops the
/// schema, also when the test panicked. Does nothing (loudly) without a
/// test database.
pub(crate) fn in_schema<F, Fut>(test: F)
where
    F: FnOnce(Scratch) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = url() else {
        return;
    };
    let scratch = Scratch::new(url);
    let rt = runtime();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(test(scratch.clone()))));
    rt.block_on(scratch.drop_schema());
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
