//! [`JobQueue`] and its builder.

#[cfg(feature = "sqlite")]
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use jobqueue_core::{
    CancelOutcome, Clock, Delivery, EventFilter, Health, Job, JobFilter, JobId, JobPage, JobStore,
    MemoryStore, NewJob, RecoverScope, RetryPolicy, StoreError,
};
use jobqueue_events::{Dispatcher, DispatcherHandle, EventBus, Subscription, Tail, WebhookConfig};
use jobqueue_runtime::{
    JobInput, Pipeline, Pipelines, RetentionConfig, Runtime, RuntimeConfig, Schedule, StartError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

enum StoreChoice {
    #[cfg(feature = "sqlite")]
    Sqlite(PathBuf),
    #[cfg(feature = "postgres")]
    Postgres(String),
    Memory,
    Custom(Arc<dyn JobStore>),
}

/// Builds a [`JobQueue`]; see [`JobQueue::builder`].
pub struct JobQueueBuilder {
    store: StoreChoice,
    pipelines: Vec<Pipeline>,
    config: RuntimeConfig,
    /// The options of the SQLite store, when `.sqlite(..)` is the store.
    #[cfg(feature = "sqlite")]
    sqlite_options: jobqueue_store_sqlite::SqliteOptions,
    shutdown_timeout: Duration,
    webhooks: Option<WebhookConfig>,
    event_buffer: usize,
}

impl std::fmt::Debug for JobQueueBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueueBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl JobQueueBuilder {
    /// Store jobs in the SQLite file at `path` (the default is `jobqueue.db`).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, path: impl Into<PathBuf>) -> Self {
        self.store = StoreChoice::Sqlite(path.into());
        self
    }

    /// Store jobs in the PostgreSQL database at `url`
    /// (`postgres://user@host:5432/db`), which other processes may share.
    /// Recovery at start then takes only jobs whose lease expired (call
    /// [`recover`](Self::recover) after this to change that). For the
    /// store's own options (a schema, the pool's size), connect a
    /// [`PostgresStore`](jobqueue_store_postgres::PostgresStore) and pass it
    /// to [`store`](Self::store).
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.store = StoreChoice::Postgres(url.into());
        self.config.recover = RecoverScope::ExpiredLeases;
        self
    }

    /// Opens the SQLite store with these options (`synchronous=FULL`, the
    /// busy timeout, readers, a size cap, ...; the default is
    /// [`SqliteOptions::default`](jobqueue_store_sqlite::SqliteOptions)).
    /// They apply when the store is [`sqlite`](Self::sqlite), the default.
    /// Their clock is replaced by the queue's ([`clock`](Self::clock)), so
    /// the store and the runtime read one time.
    ///
    /// ```no_run
    /// use jobqueue::JobQueue;
    /// use jobqueue::sqlite::{SqliteOptions, Synchronous};
    ///
    /// # async fn demo() -> Result<(), jobqueue::Error> {
    /// let queue = JobQueue::builder()
    ///     .sqlite("jobs.db")
    ///     .sqlite_options(SqliteOptions::default().synchronous(Synchronous::Full))
    ///     .start()
    ///     .await?;
    /// # queue.shutdown().await;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sqlite")]
    pub fn sqlite_options(mut self, options: jobqueue_store_sqlite::SqliteOptions) -> Self {
        self.sqlite_options = options;
        self
    }

    /// Keep jobs in memory only (tests and demos: nothing survives the process).
    pub fn memory(mut self) -> Self {
        self.store = StoreChoice::Memory;
        self
    }

    /// Use this store.
    pub fn store(mut self, store: Arc<dyn JobStore>) -> Self {
        self.store = StoreChoice::Custom(store);
        self
    }

    /// Gives the phases a value of type `T` (a connection pool, an HTTP
    /// client, settings), which they read with
    /// [`ctx.state::<T>()`](jobqueue_runtime::PhaseContext::state). One
    /// value per type: call it once for each type; a second value of a type
    /// replaces the first. Store an `Arc<T>` to share something that is not
    /// cheap to clone.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use jobqueue::{JobQueue, PhaseError, Pipeline, phase_fn};
    ///
    /// struct Db { url: String }
    ///
    /// # async fn demo() -> Result<(), jobqueue::Error> {
    /// let queue = JobQueue::builder()
    ///     .state(Arc::new(Db { url: "postgres://...".into() }))
    ///     .state(String::from("eu-west-1"))
    ///     .pipeline(Pipeline::new("report").phase(phase_fn("query", |ctx| async move {
    ///         let db = ctx.state::<Arc<Db>>()?;
    ///         let region = ctx.state::<String>()?;
    ///         Ok::<_, PhaseError>(serde_json::json!({ "db": db.url, "region": region }))
    ///     })))
    ///     .start()
    ///     .await?;
    /// # queue.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        Arc::make_mut(&mut self.config.state).insert(value);
        self
    }

    /// Registers a pipeline.
    pub fn pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipelines.push(pipeline);
        self
    }

    /// Enqueues a job of the schedule's pipeline at each of its ticks (a
    /// cron expression in UTC, or a fixed interval). Each tick is one job
    /// with the unique key `schedule:<name>:<tick>`, enqueued with `run_at`
    /// at its tick before that tick comes, so several processes that run
    /// the same schedule on one store enqueue each tick once. After
    /// downtime, the one tick enqueued before the stop runs late and the
    /// other missed ticks are skipped. A bad expression, a name used twice
    /// or an unknown pipeline is refused by [`start`](Self::start).
    ///
    /// ```no_run
    /// use jobqueue::{JobQueue, PhaseError, Pipeline, Schedule, phase_fn};
    /// use serde_json::json;
    ///
    /// # async fn demo() -> Result<(), jobqueue::Error> {
    /// let queue = JobQueue::builder()
    ///     .pipeline(Pipeline::new("report").phase(phase_fn("build", |ctx| async move {
    ///         Ok::<_, PhaseError>(json!({ "scope": ctx.input()["scope"] }))
    ///     })))
    ///     .schedule(Schedule::cron("nightly", "0 3 * * *", "report").input(json!({"scope": "all"})))
    ///     .start()
    ///     .await?;
    /// # queue.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.config.schedules.push(schedule);
        self
    }

    /// At most `n` jobs run at once (default 8).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// The retry policy of pipelines that have none of their own.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Where time comes from; the queue's own stores share it.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config.clock = clock;
        self
    }

    /// How long a claim lasts without a heartbeat (default 30 s); heartbeats
    /// come every third of it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self.config.heartbeat = lease / 3;
        self
    }

    /// How long [`JobQueue::shutdown`] lets running phases finish (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long a phase told to stop may take to return (default 5 s).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.config.stop_grace = grace;
        self
    }

    /// How often the pump looks for work that no wake-up announced (default 1 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// Runs the retention scheduler: finished jobs become stale after
    /// `stale_after`, stale jobs are deleted after `delete_after`, and ended
    /// webhook deliveries and the `job.deleted` events of deleted jobs are
    /// pruned after `prune_after`.
    pub fn retention(mut self, retention: RetentionConfig) -> Self {
        self.config.retention = Some(retention);
        self
    }

    /// Delivers events as signed webhooks: to the configured endpoints, and
    /// to each job's `webhook_url` (signed with `default_secret`).
    pub fn webhooks(mut self, config: WebhookConfig) -> Self {
        self.webhooks = Some(config);
        self
    }

    /// How far a subscriber may fall behind the live events before it is
    /// resynced from the store (default 1024 events).
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events;
        self
    }

    /// Seeds the backoff jitter, for reproducible tests.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.config.jitter_seed = Some(seed);
        self
    }

    /// Which running jobs to recover at start: all of them (one process per
    /// store, the default; an SQLite file allows no other), or only those
    /// whose lease expired, with a lease rescuer that recovers more as
    /// their leases run out (for a store several processes share, such as
    /// the planned PostgreSQL store).
    pub fn recover(mut self, scope: RecoverScope) -> Self {
        self.config.recover = scope;
        self
    }

    /// Opens the store, recovers interrupted jobs and starts the pump.
    pub async fn start(self) -> Result<JobQueue, Error> {
        // Every setting is checked before the store is opened (and locked).
        let pipelines = Pipelines::new(self.pipelines).map_err(Error::Config)?;
        jobqueue_runtime::check_schedules(&self.config.schedules, &pipelines)
            .map_err(Error::Config)?;
        self.config
            .validate()
            .map_err(|e| Error::Start(StartError::Config(e)))?;
        let webhooks = self.webhooks.unwrap_or_default();
        webhooks.validate()?;
        #[cfg_attr(
            not(any(feature = "sqlite", feature = "postgres")),
            expect(unused_mut, reason = "only the SQLite and PostgreSQL stores are typed")
        )]
        let mut typed = TypedStore::default();
        let store: Arc<dyn JobStore> = match self.store {
            #[cfg(feature = "sqlite")]
            StoreChoice::Sqlite(path) => {
                let options = self.sqlite_options.clock(self.config.clock.clone());
                let sqlite = open_sqlite(path, options).await?;
                typed.sqlite = Some(sqlite.clone());
                Arc::new(sqlite)
            }
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres(url) => {
                use jobqueue_store_postgres::{PostgresOptions, PostgresStore};
                let options = PostgresOptions::default().clock(self.config.clock.clone());
                let postgres = PostgresStore::connect(&url, options).await?;
                typed.postgres = Some(postgres.clone());
                Arc::new(postgres)
            }
            StoreChoice::Memory => Arc::new(MemoryStore::with_clock(self.config.clock.clone())),
            StoreChoice::Custom(store) => store,
        };
        // The bus is the store's sink before anything runs, so subscribers
        // see recovery's events too.
        let bus = EventBus::new(self.event_buffer);
        // On a store other processes write too, the bus follows the store
        // (every process's events, in order) instead of taking this
        // process's commits straight from the store.
        let tail = if store.capabilities().shared {
            let after = match store.last_seq().await {
                Ok(seq) => seq,
                Err(e) => {
                    store.close().await;
                    return Err(e.into());
                }
            };
            Some(Arc::new(Tail::start(store.clone(), bus.clone(), after)))
        } else {
            store.set_event_sink(Arc::new(bus.clone()));
            None
        };
        store.set_webhook_routes(webhooks.routes());
        let started = Started {
            store,
            typed,
            bus,
            tail,
            config: self.config,
            webhooks,
            shutdown_timeout: self.shutdown_timeout,
        };
        let store = started.store.clone();
        match started.run(pipelines).await {
            Ok(queue) => Ok(queue),
            Err(e) => {
                // Nothing runs: let go of the store (its file lock) at once.
                store.close().await;
                Err(e)
            }
        }
    }
}

/// The store as its own type, when the builder opened it: for what only
/// that store does (transactional enqueue).
#[derive(Clone, Default)]
struct TypedStore {
    #[cfg(feature = "sqlite")]
    sqlite: Option<jobqueue_store_sqlite::SqliteStore>,
    #[cfg(feature = "postgres")]
    postgres: Option<jobqueue_store_postgres::PostgresStore>,
}

/// What [`JobQueueBuilder::start`] has once the store is open.
struct Started {
    store: Arc<dyn JobStore>,
    typed: TypedStore,
    bus: EventBus,
    tail: Option<Arc<Tail>>,
    config: RuntimeConfig,
    webhooks: WebhookConfig,
    shutdown_timeout: Duration,
}

impl Started {
    async fn run(self, pipelines: Pipelines) -> Result<JobQueue, Error> {
        let Self {
            store,
            typed,
            bus,
            tail,
            config,
            webhooks,
            shutdown_timeout,
        } = self;
        let start_seq = store.last_seq().await?;
        // Without endpoints or a default secret there is nothing to send
        // (enqueue refuses per-job URLs then), so no dispatcher polls the
        // outbox on every commit.
        let dispatcher = if webhooks.endpoints.is_empty() && webhooks.default_secret.is_none() {
            None
        } else {
            let d = Dispatcher::new(store.clone(), &webhooks)?;
            Some(Arc::new(
                d.with_clock(config.clock.clone())
                    .wake_on(bus.latest())
                    .spawn(),
            ))
        };
        let runtime = match Runtime::start(store.clone(), pipelines, config).await {
            Ok(runtime) => runtime,
            Err(e) => {
                if let Some(d) = &dispatcher {
                    d.shutdown().await;
                }
                if let Some(t) = &tail {
                    t.shutdown().await;
                }
                return Err(e.into());
            }
        };
        Ok(JobQueue {
            store,
            typed,
            runtime: Arc::new(runtime),
            bus,
            tail,
            dispatcher,
            allow_private_webhooks: webhooks.allow_private,
            job_webhooks: webhooks.default_secret.is_some(),
            start_seq,
            drained: Arc::new(AtomicU64::new(start_seq)),
            closing: Arc::new(AtomicBool::new(false)),
            shut_down: Arc::new(tokio::sync::watch::Sender::new(false)),
            shutdown_timeout,
        })
    }
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(
    path: PathBuf,
    options: jobqueue_store_sqlite::SqliteOptions,
) -> Result<jobqueue_store_sqlite::SqliteStore, Error> {
    // Opening checks the file, applies migrations and starts the writer:
    // blocking work, kept off the async threads.
    let opened = tokio::task::spawn_blocking(move || {
        jobqueue_store_sqlite::SqliteStore::open(path, options)
    })
    .await
    .map_err(|e| Error::Config(format!("opening the SQLite store panicked: {e}")))?;
    Ok(opened?)
}

/// A running job queue: enqueue, inspect, cancel, retry, delete, shut down.
///
/// Cheap to clone; clones share the queue.
#[derive(Clone)]
pub struct JobQueue {
    store: Arc<dyn JobStore>,
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres")),
        expect(dead_code, reason = "only the SQLite and PostgreSQL stores are typed")
    )]
    typed: TypedStore,
    runtime: Arc<Runtime>,
    bus: EventBus,
    /// Feeds the bus from a store other processes share; `None` otherwise.
    tail: Option<Arc<Tail>>,
    /// `None` when there is nothing to send (no endpoint, no default secret).
    dispatcher: Option<Arc<DispatcherHandle>>,
    allow_private_webhooks: bool,
    /// A default secret is configured, so per-job `webhook_url`s can be signed.
    job_webhooks: bool,
    /// The store's last sequence number when the queue started: the bus has
    /// published nothing before it.
    start_seq: u64,
    /// The last sequence number [`drain`](Self::drain) counted up to: the
    /// next drain counts the jobs that ended after it.
    pub(crate) drained: Arc<AtomicU64>,
    /// Set when [`shutdown`](Self::shutdown) begins: from then on a store
    /// error seen by a waiter is the shutdown closing the store.
    closing: Arc<AtomicBool>,
    /// Set once [`shutdown`](Self::shutdown) has returned: waiters stop.
    pub(crate) shut_down: Arc<tokio::sync::watch::Sender<bool>>,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl JobQueue {
    /// A builder with the defaults: SQLite file `jobqueue.db` (or memory
    /// without the `sqlite` feature), concurrency 8, the system clock.
    pub fn builder() -> JobQueueBuilder {
        JobQueueBuilder {
            #[cfg(feature = "sqlite")]
            store: StoreChoice::Sqlite(PathBuf::from("jobqueue.db")),
            #[cfg(not(feature = "sqlite"))]
            store: StoreChoice::Memory,
            pipelines: Vec::new(),
            config: RuntimeConfig::default(),
            #[cfg(feature = "sqlite")]
            sqlite_options: jobqueue_store_sqlite::SqliteOptions::default(),
            shutdown_timeout: Duration::from_secs(30),
            webhooks: None,
            event_buffer: 1024,
        }
    }

    /// The store, for what the handle does not cover.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// The runtime (running counts, configuration).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Fills in what the queue knows about the job's pipeline: its phase
    /// names, and its attempt budget when the job does not set one. One
    /// rule for [`enqueue`](Self::enqueue), [`enqueue_job`](Self::enqueue_job)
    /// and [`enqueue_batch`](Self::enqueue_batch). An input that does not
    /// fit a typed pipeline's input type is refused here, with
    /// [`ErrorKind::Invalid`](jobqueue_core::ErrorKind::Invalid), before
    /// anything is written.
    fn prepare(&self, mut job: NewJob) -> Result<NewJob, Error> {
        let pipeline = self
            .runtime
            .pipelines()
            .get(&job.pipeline)
            .ok_or_else(|| Error::UnknownPipeline(job.pipeline.clone()))?;
        pipeline
            .check_input(&job.input)
            .map_err(|m| Error::Store(jobqueue_core::StoreError::Invalid(m)))?;
        job.phases = pipeline.phase_names();
        if job.max_attempts.is_none() {
            job.max_attempts = Some(pipeline.default_max_attempts(&self.runtime.config().retry));
        }
        Ok(job)
    }

    /// Enqueues a job of `pipeline` with `input`; it is durable when this
    /// returns. The attempt budget is the pipeline's retry policy's (or the
    /// largest of its phases' own policies, if one allows more).
    pub async fn enqueue<T: Serialize + ?Sized>(
        &self,
        pipeline: &str,
        input: &T,
    ) -> Result<Job, Error> {
        let input = serde_json::to_value(input).map_err(Error::Json)?;
        let job = self.prepare(NewJob::new(pipeline).input(input))?;
        self.enqueue_prepared(job).await
    }

    /// Enqueues a job of a typed pipeline (see [`jobqueue_runtime::typed`]):
    /// the pipeline is [`I::PIPELINE`](JobInput::PIPELINE), and it must have
    /// been built with [`Pipeline::typed::<I>()`](Pipeline::typed), so that
    /// its steps read what this writes.
    ///
    /// ```no_run
    /// use jobqueue::{JobInput, JobQueue, PhaseError, Pipeline};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Resize { url: String, width: u32 }
    /// impl JobInput for Resize { const PIPELINE: &'static str = "resize"; }
    ///
    /// # async fn demo() -> Result<(), jobqueue::Error> {
    /// let queue = JobQueue::builder()
    ///     .pipeline(
    ///         Pipeline::typed::<Resize>()
    ///             .step("resize", |_ctx, job: Resize| async move {
    ///                 Ok::<_, PhaseError>(format!("{}@{}", job.url, job.width))
    ///             })
    ///             .build(),
    ///     )
    ///     .start()
    ///     .await?;
    /// let job = queue.enqueue_typed(&Resize { url: "cat.png".into(), width: 64 }).await?;
    /// # let _ = job;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_typed<I: JobInput>(&self, input: &I) -> Result<Job, Error> {
        self.check_typed::<I>()?;
        self.enqueue(I::PIPELINE, input).await
    }

    /// Enqueues a job of a typed pipeline for each of `inputs`, all or none
    /// (as [`enqueue_typed`](Self::enqueue_typed) does one).
    pub async fn enqueue_many_typed<'a, I, It>(&self, inputs: It) -> Result<Vec<Job>, Error>
    where
        I: JobInput,
        It: IntoIterator<Item = &'a I>,
    {
        self.check_typed::<I>()?;
        self.enqueue_many(I::PIPELINE, inputs).await
    }

    /// The pipeline of `I` is registered and declared `I` as its input.
    fn check_typed<I: JobInput>(&self) -> Result<(), Error> {
        let pipeline = self
            .runtime
            .pipelines()
            .get(I::PIPELINE)
            .ok_or_else(|| Error::UnknownPipeline(I::PIPELINE.to_owned()))?;
        match pipeline.input_type() {
            Some(t) if t.id == std::any::TypeId::of::<I>() => Ok(()),
            Some(t) => Err(Error::Config(format!(
                "pipeline {:?} takes {}, not {}",
                I::PIPELINE,
                t.name,
                std::any::type_name::<I>()
            ))),
            None => Err(Error::Config(format!(
                "pipeline {:?} is not typed (build it with Pipeline::typed::<{}>())",
                I::PIPELINE,
                std::any::type_name::<I>()
            ))),
        }
    }

    /// Enqueues a job with every option of [`NewJob`] (priority, `run_at`,
    /// unique key, attempts, webhook URL). Its phases come from the
    /// pipeline, and so does its attempt budget unless it sets one.
    pub async fn enqueue_job(&self, job: NewJob) -> Result<Job, Error> {
        let job = self.prepare(job)?;
        self.enqueue_prepared(job).await
    }

    /// Enqueues `job` unless another job holds its key, and then returns
    /// that job instead of a `Duplicate` error (Oban's unique jobs, River's
    /// `UniqueOpts`): [`Enqueued::Existing`]. A job without a unique key is
    /// always [`Enqueued::Created`].
    ///
    /// The key is the job's `unique_key`, or one made from its pipeline and
    /// input with [`NewJob::unique_by_input`]; a queued or running job holds
    /// it. With [`NewJob::unique_for`], a job created in the same window of
    /// the period holds it too, in any state (see
    /// [`jobqueue_core::unique`]). The existing job is read after the
    /// refusal: if it was deleted meanwhile, the enqueue is tried again.
    ///
    /// ```no_run
    /// # async fn demo(queue: jobqueue::JobQueue) -> Result<(), jobqueue::Error> {
    /// use jobqueue::{Enqueued, NewJob};
    /// let job = NewJob::new("resize").unique_key("resize:cat.png");
    /// let first = queue.enqueue_unique(job.clone()).await?;
    /// let second = queue.enqueue_unique(job).await?;
    /// assert!(matches!(second, Enqueued::Existing(_)));
    /// assert_eq!(first.job().id, second.job().id);
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_unique(&self, job: NewJob) -> Result<Enqueued, Error> {
        // A holder deleted between the refusal and the read frees its key;
        // a few tries cover that race without looping forever.
        let mut last = None;
        for _ in 0..3 {
            match self.enqueue_job(job.clone()).await {
                Ok(created) => return Ok(Enqueued::Created(created)),
                Err(Error::Store(e)) if e.duplicate_of().is_some() => {
                    if let Some(existing) = e.duplicate_of()
                        && let Some(found) = self.get(existing).await?
                    {
                        return Ok(Enqueued::Existing(found));
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Store(last.unwrap_or_else(|| {
            StoreError::Conflict("the unique key's holder kept changing".into())
        })))
    }

    /// A job's own `webhook_url` comes from API callers: it must be http(s)
    /// and, unless private targets are allowed, resolve to public addresses
    /// only (checked again at delivery time, against DNS rebinding).
    async fn check_webhook_url(&self, job: &NewJob) -> Result<(), Error> {
        if let Some(url) = &job.webhook_url {
            if !self.job_webhooks {
                return Err(Error::WebhookUrl(
                    "this queue has no webhook secret to sign per-job webhook_url deliveries with"
                        .into(),
                ));
            }
            jobqueue_events::check_webhook_url_resolved(url, self.allow_private_webhooks)
                .await
                .map_err(Error::WebhookUrl)?;
        }
        Ok(())
    }

    async fn enqueue_prepared(&self, job: NewJob) -> Result<Job, Error> {
        self.check_webhook_url(&job).await?;
        let job = self.store.enqueue(job).await?;
        self.notify_enqueued(std::slice::from_ref(&job));
        Ok(job)
    }

    /// Enqueues a job of `pipeline` for each of `inputs`, all or none: a
    /// batch of inputs is as easy as one ([`enqueue`](Self::enqueue) for
    /// each, in one transaction). The jobs come back in the inputs' order.
    ///
    /// ```no_run
    /// # async fn demo(queue: jobqueue::JobQueue) -> Result<(), jobqueue::Error> {
    /// #[derive(serde::Serialize)]
    /// struct Resize { url: String, width: u32 }
    ///
    /// let inputs = ["a.png", "b.png"].map(|f| Resize { url: f.into(), width: 64 });
    /// let jobs = queue.enqueue_many("resize", &inputs).await?;
    /// assert_eq!(jobs.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_many<'a, T, I>(&self, pipeline: &str, inputs: I) -> Result<Vec<Job>, Error>
    where
        T: Serialize + 'a,
        I: IntoIterator<Item = &'a T>,
    {
        let jobs = inputs
            .into_iter()
            .map(|input| {
                let input = serde_json::to_value(input).map_err(Error::Json)?;
                Ok(NewJob::new(pipeline).input(input))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        self.enqueue_batch(jobs).await
    }

    /// Enqueues all the jobs or none, each with every option of [`NewJob`]
    /// (as [`enqueue_job`](Self::enqueue_job) does one). The jobs come back
    /// in the given order.
    pub async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>, Error> {
        let jobs = self.prepare_batch(jobs).await?;
        let jobs = self.store.enqueue_batch(jobs).await?;
        self.notify_enqueued(&jobs);
        Ok(jobs)
    }

    /// [`prepare`](Self::prepare) and the webhook check for each job of a
    /// batch; a refusal names the job's index.
    async fn prepare_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<NewJob>, Error> {
        let jobs = jobs
            .into_iter()
            .enumerate()
            .map(|(index, j)| {
                self.prepare(j).map_err(|e| match e {
                    Error::UnknownPipeline(p) => Error::Store(jobqueue_core::StoreError::Batch {
                        index,
                        error: Box::new(jobqueue_core::StoreError::Invalid(format!(
                            "unknown pipeline {p:?}"
                        ))),
                    }),
                    Error::Store(e) => Error::Store(jobqueue_core::StoreError::Batch {
                        index,
                        error: Box::new(e),
                    }),
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for job in &jobs {
            self.check_webhook_url(job).await?;
        }
        Ok(jobs)
    }

    /// Wakes the pump for the jobs just enqueued.
    fn notify_enqueued(&self, jobs: &[Job]) {
        for j in jobs {
            self.runtime.notify_enqueued(j.run_at);
        }
    }

    /// Runs `f` with the SQLite store's connection and enqueues `jobs`, in
    /// one transaction: the program's own writes and the jobs commit
    /// together, or nothing does (River's `InsertTx`, Oban's
    /// `Ecto.Multi`). Returns the jobs (in the given order) and what `f`
    /// returned, after the commit; then the jobs' events are published and
    /// the pump wakes.
    ///
    /// The jobs are checked first, as [`enqueue_batch`](Self::enqueue_batch)
    /// checks them (pipelines, inputs, webhook URLs): a refusal runs no
    /// closure. `f` runs on the store's writer thread inside its
    /// transaction, so it must be short and must not begin, commit or roll
    /// back a transaction itself; it may read and write the program's own
    /// tables in the same SQLite file, which the program creates (the
    /// store's migrations own only the store's tables). An error or panic
    /// of `f`, or a job refused by the store (a duplicate key), rolls back
    /// both: [`TxError::Closure`](crate::TxError::Closure) or [`TxError::Queue`](crate::TxError::Queue). Only on the SQLite
    /// store (`.sqlite(path)`); on PostgreSQL, see `enqueue_in`.
    ///
    /// ```no_run
    /// use diesel::connection::SimpleConnection;
    /// use jobqueue::{NewJob, TxError};
    ///
    /// # async fn demo(queue: jobqueue::JobQueue) -> Result<(), TxError<diesel::result::Error>> {
    /// let (jobs, ()) = queue
    ///     .enqueue_with(vec![NewJob::new("ship").input(serde_json::json!({"order": 7}))], |conn| {
    ///         conn.batch_execute("INSERT INTO orders (id, status) VALUES (7, 'paid')")
    ///     })
    ///     .await?;
    /// assert_eq!(jobs.len(), 1);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sqlite")]
    pub async fn enqueue_with<T, E, F>(
        &self,
        jobs: Vec<NewJob>,
        f: F,
    ) -> Result<(Vec<Job>, T), crate::TxError<E>>
    where
        F: FnOnce(&mut jobqueue_store_sqlite::SqliteConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        use jobqueue_store_sqlite::UserTxError;
        let Some(sqlite) = &self.typed.sqlite else {
            return Err(Error::Config(
                "enqueue_with needs the SQLite store the builder opens (`.sqlite(path)`)".into(),
            )
            .into());
        };
        let jobs = self.prepare_batch(jobs).await?;
        let (jobs, value) = sqlite.enqueue_with(jobs, f).await.map_err(|e| match e {
            UserTxError::Closure(e) => crate::TxError::Closure(e),
            UserTxError::Store(e) => crate::TxError::Queue(Error::Store(e)),
        })?;
        self.notify_enqueued(&jobs);
        Ok((jobs, value))
    }

    /// Enqueues `job` on `conn`, the program's own PostgreSQL connection,
    /// inside the diesel-async transaction it has open: the job commits
    /// with the program's writes, or rolls back with them (no job, no
    /// event). At the commit every process's pump wakes and the event
    /// reaches subscribers. Only on the PostgreSQL store the builder opens
    /// (`.postgres(url)`); `conn` must reach the same database (and
    /// schema). The job is checked as [`enqueue_job`](Self::enqueue_job)
    /// checks it, and the conditions of
    /// [`PostgresStore::enqueue_in`](jobqueue_store_postgres::PostgresStore::enqueue_in)
    /// apply: a `READ COMMITTED` transaction opened through diesel-async,
    /// and the enqueue last, just before the commit (readers of the event
    /// log wait for the transaction to end).
    ///
    /// ```no_run
    /// use diesel_async::{AsyncConnection, RunQueryDsl};
    /// use jobqueue::NewJob;
    ///
    /// # async fn demo(queue: jobqueue::JobQueue, url: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let mut conn = jobqueue::postgres::AsyncPgConnection::establish(url).await?;
    /// let job = conn
    ///     .transaction::<_, Box<dyn std::error::Error + Send + Sync>, _>(async |conn| {
    ///         diesel::sql_query("INSERT INTO orders (id) VALUES (7)").execute(conn).await?;
    ///         Ok(queue.enqueue_in(conn, NewJob::new("ship")).await?)
    ///     })
    ///     .await?;
    /// # let _ = job;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub async fn enqueue_in(
        &self,
        conn: &mut jobqueue_store_postgres::AsyncPgConnection,
        job: NewJob,
    ) -> Result<Job, Error> {
        let Some(postgres) = &self.typed.postgres else {
            return Err(Error::Config(
                "enqueue_in needs the PostgreSQL store the builder opens (`.postgres(url)`)".into(),
            ));
        };
        let job = self.prepare(job)?;
        self.check_webhook_url(&job).await?;
        let job = postgres.enqueue_in(conn, job).await?;
        // The commit's notice wakes the pumps; this also sets the pump's
        // timer for a job due later.
        self.notify_enqueued(std::slice::from_ref(&job));
        Ok(job)
    }

    /// One job with its phases.
    pub async fn get(&self, id: JobId) -> Result<Option<Job>, Error> {
        Ok(self.store.job(id).await?)
    }

    /// A page of jobs, newest first.
    pub async fn list(&self, filter: JobFilter) -> Result<JobPage, Error> {
        Ok(self.store.list(filter).await?)
    }

    /// Cancels a job: a queued one at once; a running one is told to stop and
    /// ends `cancelled` after its phase returns or the stop grace ends.
    pub async fn cancel(&self, id: JobId) -> Result<CancelOutcome, Error> {
        Ok(self.runtime.cancel(id).await?)
    }

    /// Retries a failed or cancelled job: it resumes at its first phase not
    /// completed, keeps the earlier results, and gets its whole attempt
    /// budget again.
    pub async fn retry(&self, id: JobId) -> Result<Job, Error> {
        let job = self.store.retry(id).await?;
        self.runtime.notify_enqueued(job.run_at);
        Ok(job)
    }

    /// Pauses a pipeline: from now on no process claims its queued jobs,
    /// until [`resume`](Self::resume). Jobs already running finish normally
    /// (one that fails with a retry is queued again and then waits);
    /// enqueueing, also by schedules, goes on, and the jobs wait. The pause
    /// is stored, so it holds across restarts and for every process sharing
    /// the store. Appends a `pipeline.paused` event and returns `true`, or
    /// returns `false` and appends nothing if the pipeline was paused
    /// already.
    ///
    /// Any valid pipeline name is accepted, also one this queue does not
    /// define (another process may run it); an empty or over-long name is
    /// refused with [`ErrorKind::Invalid`](jobqueue_core::ErrorKind::Invalid).
    ///
    /// ```no_run
    /// # async fn demo(queue: jobqueue::JobQueue) -> Result<(), jobqueue::Error> {
    /// assert!(queue.pause("emails").await?);
    /// assert_eq!(queue.paused().await?, ["emails"]);
    /// assert!(queue.resume("emails").await?);
    /// # Ok(()) }
    /// ```
    pub async fn pause(&self, pipeline: &str) -> Result<bool, Error> {
        Ok(self.store.pause_pipeline(pipeline).await?)
    }

    /// Resumes a paused pipeline: its queued jobs are claimed again at once
    /// (this process's pump is woken, and through the store's listener the
    /// pumps of the other processes sharing it). Appends a
    /// `pipeline.resumed` event and returns `true`, or returns `false` and
    /// appends nothing if the pipeline was not paused.
    pub async fn resume(&self, pipeline: &str) -> Result<bool, Error> {
        let resumed = self.store.resume_pipeline(pipeline).await?;
        if resumed {
            self.runtime.notify_runnable();
        }
        Ok(resumed)
    }

    /// The paused pipelines, by name.
    pub async fn paused(&self) -> Result<Vec<String>, Error> {
        Ok(self.store.paused_pipelines().await?)
    }

    /// Deletes a finished job with all its rows.
    pub async fn delete(&self, id: JobId) -> Result<(), Error> {
        Ok(self.store.delete(id).await?)
    }

    /// Stops claiming, lets running phases finish within the shutdown
    /// timeout, then stops the rest as interrupted (they resume at the next
    /// start), then stops the webhook dispatcher (pending deliveries stay in
    /// the store and go out after the next start), and last closes the
    /// store ([`JobStore::close`]; also a store given with
    /// [`JobQueueBuilder::store`]): once this returns, the database is
    /// released and a new queue can open it at once. Calls after the first
    /// return at once.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        self.runtime.shutdown(self.shutdown_timeout).await;
        if let Some(d) = &self.dispatcher {
            d.shutdown().await;
        }
        if let Some(t) = &self.tail {
            t.shutdown().await;
        }
        self.store.close().await;
        self.shut_down.send_replace(true);
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Resolves once [`shutdown`](Self::shutdown) has returned.
    pub(crate) async fn shut_down(&self) {
        let mut rx = self.shut_down.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Every event committed from now on that passes `filter`, typed, in
    /// sequence order, exactly once. A subscriber that falls behind is
    /// resynced from the store; it never slows the queue.
    pub fn subscribe(&self, filter: EventFilter) -> Subscription {
        // "Now" is the last event published when this is called, not when the
        // stream is first polled, so an enqueue right after subscribing is seen.
        let now = (*self.bus.latest().borrow()).max(self.start_seq);
        self.bus.subscribe_after(self.store.clone(), now, filter)
    }

    /// Every event after sequence number `after` that passes `filter`: the
    /// stored ones first, then live ones, with no gap and no duplicate.
    pub fn subscribe_after(&self, after: u64, filter: EventFilter) -> Subscription {
        self.bus.subscribe_after(self.store.clone(), after, filter)
    }

    /// The Server-Sent Events byte stream (see `docs/events.md`) for every event
    /// after `after` (the `Last-Event-ID`) that passes `filter`: replay, then
    /// live, keep-alives every 15 s. Serve it with
    /// [`jobqueue_events::sse_body`] or [`jobqueue_events::sse::sse_response`].
    pub fn sse(
        &self,
        after: u64,
        filter: EventFilter,
    ) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + use<> {
        jobqueue_events::sse_stream(self.store.clone(), &self.bus, after, filter)
    }

    /// How the queue's background tasks are doing: the pump, retention and
    /// lease rescue (when configured), the workers, and the webhook
    /// dispatcher (when there is one). A task that panicked is restarted and
    /// its panics are counted here; [`Health::is_healthy`] is false while one
    /// is down. A server's `/health` answers from this.
    pub fn health(&self) -> Health {
        let mut health = self.runtime.health();
        if let Some(d) = &self.dispatcher {
            health.tasks.push(d.health());
        }
        health
    }

    /// Queued jobs of pipelines this queue does not define, by pipeline:
    /// they are neither run nor failed here, but wait for a process that
    /// defines their pipeline (see [`Runtime::stranded`]).
    pub async fn stranded(&self) -> Result<Vec<jobqueue_core::JobCount>, Error> {
        Ok(self.runtime.stranded().await?)
    }

    /// Every webhook delivery row after an attempt was recorded (status,
    /// attempts, last error), for metrics; `None` when this queue sends no
    /// webhooks. A receiver that lags loses the oldest rows (the store has
    /// them all).
    pub fn webhook_attempts(&self) -> Option<tokio::sync::broadcast::Receiver<Delivery>> {
        self.dispatcher.as_ref().map(|d| d.attempts())
    }

    /// The event bus (for SSE servers that build their own streams).
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// Checks `job` as [`enqueue_job`](Self::enqueue_job) would, and
    /// enqueues nothing: its pipeline is registered here, its fields are
    /// ones every store accepts ([`NewJob::validate`]), and its
    /// `webhook_url` is allowed (which resolves its host). A server checks
    /// each job of a batch with it first, so that a refusal can say which
    /// job it was.
    pub async fn check_job(&self, job: &NewJob) -> Result<(), Error> {
        let job = self.prepare(job.clone())?;
        job.validate()
            .map_err(|m| Error::Store(jobqueue_core::StoreError::Invalid(m)))?;
        self.check_webhook_url(&job).await
    }
}

/// What [`JobQueue::enqueue_unique`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// The job was enqueued.
    Created(Job),
    /// Another job held the key (queued or running, or created in the same
    /// window of a unique period): this one, unchanged.
    Existing(Job),
}

impl Enqueued {
    /// The job, created or existing.
    pub fn job(&self) -> &Job {
        match self {
            Self::Created(job) | Self::Existing(job) => job,
        }
    }

    /// The job, created or existing.
    pub fn into_job(self) -> Job {
        match self {
            Self::Created(job) | Self::Existing(job) => job,
        }
    }

    /// Whether this call enqueued it.
    pub fn is_created(&self) -> bool {
        matches!(self, Self::Created(_))
    }
}

/// Typed access to a job's input and results.
pub trait JobResults {
    /// The job's input read as `T`.
    fn input_as<T: DeserializeOwned>(&self) -> Result<T, Error>;
    /// The result of phase `phase` read as `T`, if that phase completed.
    fn result_of<T: DeserializeOwned>(&self, phase: &str) -> Result<Option<T>, Error>;
}

impl JobResults for Job {
    fn input_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.input).map_err(Error::Json)
    }

    fn result_of<T: DeserializeOwned>(&self, phase: &str) -> Result<Option<T>, Error> {
        match self.phase(phase).and_then(|p| p.result.as_ref()) {
            Some(v) => T::deserialize(v).map(Some).map_err(Error::Json),
            None => Ok(None),
        }
    }
}
