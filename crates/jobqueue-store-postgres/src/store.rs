//! [`PostgresStore`]: connecting, and the [`JobStore`] methods, each a call
//! into [`crate::ops`] (writes) or [`crate::read`] run by [`crate::tx`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use jobqueue_core::job::check_name;
use jobqueue_core::{AttemptOutcome, Capabilities, ErrorKind, StoreListener};
use jobqueue_core::{
    CancelOutcome, ClaimRequest, Claimed, Delivery, DeliveryFilter, DeliveryId, Event, EventFilter,
    EventSink, FailureOutcome, Job, JobCount, JobError, JobFilter, JobId, JobPage, JobStore, Lease,
    NewJob, Next, Progress, Pruned, RecoverScope, Renewal, StoreError, WebhookRoute,
    heartbeat_each,
};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::error::{conn_err, internal};
use crate::group::Grouper;
use crate::listen::Listener;
use crate::migrate::{SyncConn, migrate};
use crate::options::PostgresOptions;
use crate::seq::Sequencer;
use crate::tx::Inner;
use crate::{ops, read, singleton};

/// The [`JobStore`] on PostgreSQL, for one process or many sharing a
/// database. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("clock", &self.inner.clock)
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`),
    /// applies the migrations the store's schema lacks, and opens the pool.
    /// Must be called inside a tokio runtime, whose tasks then run the
    /// store's calls.
    ///
    /// Fails with `Invalid` (a malformed URL or option, no runtime),
    /// `Io` (the database cannot be reached or refuses the login),
    /// `SchemaTooNew` (a newer jobqueue migrated the schema) or
    /// `Incompatible` (the schema holds tables that are not jobqueue's).
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        options.validate()?;
        url.parse::<tokio_postgres::Config>().map_err(|e| {
            StoreError::Invalid(format!("the PostgreSQL connection URL is malformed: {e}"))
        })?;
        let runtime = Handle::try_current().map_err(|_| {
            StoreError::Invalid(
                "PostgresStore::connect must be called inside a tokio runtime".to_owned(),
            )
        })?;
        let conn = establish(url, options.connect_timeout).await?;
        let schema = options.schema.clone();
        // diesel's migration runner is synchronous: a blocking thread.
        tokio::task::spawn_blocking(move || {
            let mut conn = SyncConn::from(conn);
            migrate(&mut conn, schema.as_deref())
        })
        .await
        .map_err(|e| internal(format!("migrating the postgres schema panicked: {e}")))??;
        let setup = session_setup(&options);
        let pool = pool(url, &options, &setup)?;
        let channel = crate::listen::channel(options.schema.as_deref());
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                clock: options.clock,
                sink: RwLock::new(None),
                routes: RwLock::new(Arc::from(Vec::new())),
                sequencer: Sequencer::new(url, &setup, options.connect_timeout),
                listener: Listener::new(url, &setup, channel.clone(), options.connect_timeout),
                grouper: Grouper::new(),
                channel,
                schema: options.schema.clone(),
                closed: AtomicBool::new(false),
                tasks: TaskTracker::new(),
                runtime,
            }),
        })
    }
}

impl PostgresStore {
    /// Enqueues `job` on `conn`, the program's own connection, inside the
    /// transaction it has open: the job and its `job.created` event commit
    /// with the program's other writes, or roll back with them. Without an
    /// open transaction it runs in one of its own.
    ///
    /// - The transaction must be opened through diesel-async
    ///   (`conn.transaction(..)` or `AnsiTransactionManager`), so that the
    ///   enqueue runs in a savepoint of it, and be `READ COMMITTED` (the
    ///   default; another level is refused with `Invalid`).
    /// - `conn` must reach the store's database; the store's schema (if it
    ///   has one) is set as the transaction's `search_path` for the
    ///   enqueue, then put back.
    /// - At the commit, the store's channel is notified: every process's
    ///   pump wakes and its tail reads the event. If the transaction rolls
    ///   back (also to a savepoint around the enqueue), no job and no event
    ///   exist, and readers of the event log skip the numbers it reserved.
    /// - Readers of the event log wait for the transaction to end (the
    ///   event's number is reserved until then): enqueue last, just before
    ///   the commit. Writers do not wait. Do not cancel the call halfway
    ///   and then commit.
    /// - The event is not published to this store's
    ///   [`EventSink`](jobqueue_core::EventSink) (this process does not see
    ///   the commit); subscribers read it from the store after the commit's
    ///   notice, as the façade does on PostgreSQL.
    ///
    /// Refusals are those of [`enqueue`](JobStore::enqueue) (`Invalid`,
    /// `Duplicate`, `DuplicateInPeriod`); after one, the savepoint is rolled
    /// back and the program's transaction goes on unharmed.
    ///
    /// ```no_run
    /// use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    /// use jobqueue_core::NewJob;
    /// use jobqueue_store_postgres::PostgresStore;
    ///
    /// # async fn demo(store: PostgresStore, conn: &mut AsyncPgConnection) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let job = conn
    ///     .transaction::<_, Box<dyn std::error::Error + Send + Sync>, _>(async |conn| {
    ///         diesel::sql_query("INSERT INTO orders (id) VALUES (1)").execute(conn).await?;
    ///         Ok(store.enqueue_in(conn, NewJob::new("ship")).await?)
    ///     })
    ///     .await?;
    /// # let _ = job;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_in(
        &self,
        conn: &mut AsyncPgConnection,
        job: NewJob,
    ) -> Result<Job, StoreError> {
        self.enqueue_batch_in(conn, vec![job])
            .await
            .map_err(single)?
            .pop()
            .ok_or_else(|| internal("postgres: enqueue wrote no job"))
    }

    /// Enqueues `jobs` (all or none) on `conn` inside its transaction, as
    /// [`enqueue_in`](Self::enqueue_in) does one; the jobs come back in
    /// the given order.
    pub async fn enqueue_batch_in(
        &self,
        conn: &mut AsyncPgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Job>, StoreError> {
        crate::user_tx::enqueue_in(&self.inner, conn, jobs).await
    }
}

/// A connection to `url`, given `timeout` to open.
pub(crate) async fn establish(
    url: &str,
    timeout: Duration,
) -> Result<AsyncPgConnection, StoreError> {
    tokio::time::timeout(timeout, AsyncPgConnection::establish(url))
        .await
        .map_err(|_| {
            StoreError::backend(
                ErrorKind::Io,
                format!("cannot connect to postgres: no answer within {timeout:?}"),
            )
        })?
        .map_err(|e| conn_err(&e))
}

/// The settings of every session of the store: its name, and its schema.
fn session_setup(options: &PostgresOptions) -> String {
    // The schema is a checked identifier; the name is quoted as a literal.
    let mut setup = format!(
        "SET application_name = '{}'",
        options.application_name.replace('\'', "''")
    );
    if let Some(schema) = &options.schema {
        setup.push_str(&format!("; SET search_path TO {schema}"));
    }
    setup
}

/// The pool: connections that run `setup` when they open, checked for an
/// open transaction (not with a query) when they come back.
fn pool(
    url: &str,
    options: &PostgresOptions,
    setup: &str,
) -> Result<Pool<AsyncPgConnection>, StoreError> {
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    // A connection whose socket closed or whose transaction is still open
    // is dropped on return; a query per checkout would cost a round trip
    // on every call.
    config.recycling_method = RecyclingMethod::Fast;
    let setup: Arc<str> = Arc::from(setup);
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let setup = Arc::clone(&setup);
        Box::pin(async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            conn.batch_execute(&setup)
                .await
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(options.max_connections)
        .wait_timeout(Some(options.wait_timeout))
        .create_timeout(Some(options.connect_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| internal(format!("building the postgres pool: {e}")))
}

/// A single enqueue's error: the batch's, unwrapped.
fn single(e: StoreError) -> StoreError {
    match e {
        StoreError::Batch { index: 0, error } => *error,
        other => other,
    }
}

#[async_trait]
impl JobStore for PostgresStore {
    fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        *self.inner.sink.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    fn set_webhook_routes(&self, routes: Vec<WebhookRoute>) {
        *self.inner.routes.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(routes);
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::shared()
    }

    fn listen(&self, listener: Arc<dyn StoreListener>) -> bool {
        self.inner.listener.add(listener, &self.inner.runtime);
        true
    }

    async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.listener.close();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.pool.close();
        self.inner.sequencer.close().await;
    }

    async fn enqueue(&self, job: NewJob) -> Result<Job, StoreError> {
        let mut jobs = self
            .inner
            .write(move |tx| Box::pin(async move { ops::enqueue(tx, vec![job]).await }))
            .await
            .map_err(single)?;
        jobs.pop()
            .ok_or_else(|| internal("postgres: enqueue wrote no job"))
    }

    async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.inner
            .write(move |tx| Box::pin(async move { ops::enqueue(tx, jobs).await }))
            .await
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        self.inner
            .write(move |tx| Box::pin(async move { ops::claim(tx, req).await }))
            .await
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<bool, StoreError> {
        let lease = *lease;
        let now = self.inner.now()?;
        self.inner
            .run(move |conn| {
                Box::pin(async move { ops::heartbeat(conn, now, &lease, extend).await })
            })
            .await
    }

    async fn heartbeat_many(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<Renewal>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let batch = leases.to_vec();
        let now = self.inner.now()?;
        let renewed = self
            .inner
            .run(move |conn| {
                Box::pin(async move { ops::heartbeat_many(conn, now, &batch, extend).await })
            })
            .await?;
        match renewed {
            Some(renewals) => Ok(renewals),
            // `extend` is out of range: reported lease by lease, as a
            // single heartbeat reports it.
            None => heartbeat_each(self, leases, extend).await,
        }
    }

    async fn reshape_phases(&self, lease: &Lease, phases: Vec<String>) -> Result<Job, StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| Box::pin(async move { ops::reshape_phases(tx, &lease, phases).await }))
            .await
    }

    async fn phase_started(&self, lease: &Lease, index: usize) -> Result<(), StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| Box::pin(async move { ops::phase_started(tx, &lease, index).await }))
            .await
    }

    async fn phase_progress(
        &self,
        lease: &Lease,
        index: usize,
        progress: Progress,
    ) -> Result<(), StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| {
                Box::pin(async move { ops::phase_progress(tx, &lease, index, progress).await })
            })
            .await
    }

    async fn save_checkpoint(
        &self,
        lease: &Lease,
        index: usize,
        checkpoint: Value,
    ) -> Result<(), StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| {
                Box::pin(async move { ops::save_checkpoint(tx, &lease, index, checkpoint).await })
            })
            .await
    }

    async fn snooze(
        &self,
        lease: &Lease,
        index: usize,
        run_at: OffsetDateTime,
    ) -> Result<Job, StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| Box::pin(async move { ops::snooze(tx, &lease, index, run_at).await }))
            .await
    }

    async fn phase_completed(
        &self,
        lease: &Lease,
        index: usize,
        result: Value,
    ) -> Result<(), StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| {
                Box::pin(async move { ops::phase_completed(tx, &lease, index, result).await })
            })
            .await
    }

    async fn phase_failed(
        &self,
        lease: &Lease,
        index: usize,
        error: String,
        outcome: FailureOutcome,
    ) -> Result<Job, StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| {
                Box::pin(async move { ops::phase_failed(tx, &lease, index, error, outcome).await })
            })
            .await
    }

    async fn advance(
        &self,
        lease: &Lease,
        index: usize,
        result: Value,
        next: Next,
    ) -> Result<(), StoreError> {
        let call = ops::Advance {
            lease: *lease,
            index,
            result,
            next,
        };
        self.inner.grouper.advance(&self.inner, call).await
    }

    async fn complete_job(&self, lease: &Lease) -> Result<Job, StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| Box::pin(async move { ops::complete_job(tx, &lease).await }))
            .await
    }

    async fn fail_job(&self, lease: &Lease, error: JobError) -> Result<Job, StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| Box::pin(async move { ops::fail_job(tx, &lease, error).await }))
            .await
    }

    async fn cancel_running(&self, lease: &Lease) -> Result<Job, StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| Box::pin(async move { ops::cancel_running(tx, &lease).await }))
            .await
    }

    async fn interrupt(&self, lease: &Lease) -> Result<Job, StoreError> {
        let lease = *lease;
        self.inner
            .write(move |tx| Box::pin(async move { ops::interrupt(tx, &lease).await }))
            .await
    }

    async fn recover(&self, scope: RecoverScope) -> Result<Vec<Job>, StoreError> {
        self.inner
            .write(move |tx| Box::pin(async move { ops::recover(tx, scope).await }))
            .await
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome, StoreError> {
        self.inner
            .write(move |tx| Box::pin(async move { ops::request_cancel(tx, id).await }))
            .await
    }

    async fn retry(&self, id: JobId) -> Result<Job, StoreError> {
        self.inner
            .write(move |tx| Box::pin(async move { ops::retry(tx, id).await }))
            .await
    }

    async fn delete(&self, id: JobId) -> Result<(), StoreError> {
        self.inner
            .write(move |tx| Box::pin(async move { ops::delete(tx, id).await }))
            .await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner
            .run(move |conn| Box::pin(async move { read::job(conn, id).await }))
            .await
    }

    async fn list(&self, filter: JobFilter) -> Result<JobPage, StoreError> {
        self.inner
            .run(move |conn| Box::pin(async move { read::list(conn, filter).await }))
            .await
    }

    async fn pause_pipeline(&self, pipeline: &str) -> Result<bool, StoreError> {
        check_name("pipeline name", pipeline).map_err(StoreError::Invalid)?;
        let pipeline = pipeline.to_owned();
        self.inner
            .write(move |tx| Box::pin(async move { ops::pause_pipeline(tx, &pipeline).await }))
            .await
    }

    async fn resume_pipeline(&self, pipeline: &str) -> Result<bool, StoreError> {
        check_name("pipeline name", pipeline).map_err(StoreError::Invalid)?;
        let pipeline = pipeline.to_owned();
        self.inner
            .write(move |tx| Box::pin(async move { ops::resume_pipeline(tx, &pipeline).await }))
            .await
    }

    async fn paused_pipelines(&self) -> Result<Vec<String>, StoreError> {
        self.inner
            .run(move |conn| Box::pin(async move { read::paused_pipelines(conn).await }))
            .await
    }

    async fn counts(&self) -> Result<Vec<JobCount>, StoreError> {
        self.inner
            .run(move |conn| Box::pin(async move { read::counts(conn).await }))
            .await
    }

    async fn events_after(
        &self,
        after: u64,
        filter: EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner
            .run(move |conn| {
                Box::pin(async move { read::events_after(conn, after, filter, limit).await })
            })
            .await
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        self.inner
            .run(move |conn| Box::pin(async move { read::last_seq(conn).await }))
            .await
    }

    async fn mark_stale(
        &self,
        finished_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        self.inner
            .write(move |tx| {
                Box::pin(async move { ops::mark_stale(tx, finished_before, limit).await })
            })
            .await
    }

    async fn delete_stale(
        &self,
        stale_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        self.inner
            .write(move |tx| {
                Box::pin(async move { ops::delete_stale(tx, stale_before, limit).await })
            })
            .await
    }

    async fn prune(&self, before: OffsetDateTime, limit: usize) -> Result<Pruned, StoreError> {
        self.inner
            .write(move |tx| Box::pin(async move { ops::prune(tx, before, limit).await }))
            .await
    }

    async fn due_deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let now = self.inner.now()?;
        self.inner
            .run(move |conn| Box::pin(async move { read::due_deliveries(conn, now, limit).await }))
            .await
    }

    async fn try_lead(&self, role: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.inner.now()?;
        let (role, holder) = (role.to_owned(), holder.to_owned());
        self.inner
            .run(move |conn| {
                Box::pin(async move { singleton::try_lead(conn, now, &role, &holder, ttl).await })
            })
            .await
    }

    async fn claim_deliveries(
        &self,
        limit: usize,
        lease_for: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.inner
            .write(move |tx| {
                Box::pin(async move { singleton::claim_deliveries(tx, limit, lease_for).await })
            })
            .await
    }

    async fn next_delivery_at(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        self.inner
            .run(move |conn| Box::pin(async move { read::next_delivery_at(conn).await }))
            .await
    }

    async fn record_attempt(
        &self,
        id: DeliveryId,
        outcome: AttemptOutcome,
    ) -> Result<Delivery, StoreError> {
        self.inner
            .write(move |tx| Box::pin(async move { ops::record_attempt(tx, id, outcome).await }))
            .await
    }

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        self.inner
            .run(move |conn| Box::pin(async move { read::deliveries(conn, filter).await }))
            .await
    }
}
