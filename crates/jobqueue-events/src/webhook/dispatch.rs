//! The [`Dispatcher`]: sends due webhook deliveries from the store's outbox
//! and records each attempt's outcome.
//!
//! One task loops: it asks the store for due deliveries, starts each (up to
//! the configured concurrency) on its own task, and sleeps until the next one
//! is due, a new event was published (the bus's [`latest`] watch), an
//! attempt finished, or shutdown. Everything it knows is in the store, so a
//! new dispatcher on the same store resumes where an old one stopped.
//!
//! The loop runs under a supervisor: a panic in it (a store that panics, a
//! bug) is logged, counted in [`DispatcherHandle::health`], and the loop
//! starts again after a short pause, with the attempts in flight still
//! running. A panic in an attempt is that attempt's failure, retried on
//! the delivery's schedule like any other.
//!
//! One attempt: `POST` of the event's JSON with the Standard Webhooks
//! headers. A 2xx answer within the timeout delivers it; 410 Gone fails it
//! at once; anything else (another status, a timeout, a connection error) is
//! tried again after the next delay of the retry schedule, or later if the
//! answer's `Retry-After` says so, and fails after the last delay. A
//! delivery that cannot be attempted at all (its endpoint left the
//! configuration, no secret for per-job URLs, a forbidden address) fails at
//! once with the reason as its error: nothing loops.
//!
//! [`latest`]: crate::EventBus::latest

use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jobqueue_core::health::panic_message;
use jobqueue_core::{
    AttemptOutcome, Clock, Delivery, DeliveryId, DeliveryTarget, JobStore, StoreError, SystemClock,
    TaskHealth, TaskState, timefmt,
};
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};
use tokio::task::{self, JoinSet};

use super::sign::SigningKey;
use super::url::{PublicResolver, Target, find_forbidden};
use super::{MAX_RETRY_AFTER, WebhookConfig, WebhookError};
use crate::wire::event_json_string;

/// How often the dispatcher looks at the store even without a wake-up, so it
/// also finds deliveries it was not woken for (written through a store
/// whose events do not reach its bus, or by another process on a store
/// several processes share).
pub const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(10);

/// The connector of the webhook clients: http, and https with feature `tls`.
#[cfg(feature = "tls")]
type Connector<R> = hyper_rustls::HttpsConnector<HttpConnector<R>>;
/// The connector of the webhook clients: http only without feature `tls`.
#[cfg(not(feature = "tls"))]
type Connector<R> = HttpConnector<R>;

type TrustedClient = Client<Connector<GaiResolver>, Full<Bytes>>;
type PublicClient = Client<Connector<PublicResolver>, Full<Bytes>>;

/// A connector that resolves names with `resolver`.
#[cfg(feature = "tls")]
fn connector<R>(resolver: R) -> Result<Connector<R>, WebhookError> {
    let mut http = HttpConnector::new_with_resolver(resolver);
    // The TLS layer decides the scheme; plain HTTP stays allowed.
    http.enforce_http(false);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| WebhookError::Tls(e.to_string()))?;
    Ok(tls.https_or_http().enable_http1().wrap_connector(http))
}

/// A connector that resolves names with `resolver`.
#[cfg(not(feature = "tls"))]
fn connector<R>(resolver: R) -> Result<Connector<R>, WebhookError> {
    Ok(HttpConnector::new_with_resolver(resolver))
}

/// How much longer than the longest attempt a claim on a delivery lasts.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);

/// How deliveries to one kind of target are signed, retried and timed out.
struct Route {
    key: SigningKey,
    schedule: Vec<Duration>,
    timeout: Duration,
}

/// What every attempt task shares.
struct Shared {
    store: Arc<dyn JobStore>,
    /// On a store several processes share: how long a claim on a delivery
    /// lasts (see [`JobStore::claim_deliveries`]). `None`: this is the
    /// only dispatcher, and it reads due deliveries without claiming them.
    claim_for: Option<Duration>,
    clock: Arc<dyn Clock>,
    /// Configured endpoints by URL.
    endpoints: HashMap<String, Route>,
    /// Per-job `webhook_url`s; `None` without a default secret.
    job_route: Option<Route>,
    allow_private: bool,
    /// For configured endpoints: any address.
    trusted: TrustedClient,
    /// For per-job URLs unless private targets are allowed: public
    /// addresses only, checked when connecting.
    public: PublicClient,
    attempts: broadcast::Sender<Delivery>,
    /// What [`DispatcherHandle::health`] reports; attempts count their
    /// panics here too.
    health: Arc<HealthCell>,
}

/// Sends the webhook outbox of one store. Build it, then [`spawn`](Self::spawn) it.
pub struct Dispatcher {
    shared: Shared,
    wake: Option<watch::Receiver<u64>>,
    concurrency: usize,
    max_idle: Duration,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("endpoints", &self.shared.endpoints.len())
            .field("allow_private", &self.shared.allow_private)
            .field("concurrency", &self.concurrency)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher for `store` with `config` (checked with
    /// [`WebhookConfig::validate`]), on the system clock.
    pub fn new(store: Arc<dyn JobStore>, config: &WebhookConfig) -> Result<Self, WebhookError> {
        config.validate()?;
        let mut endpoints = HashMap::with_capacity(config.endpoints.len());
        for e in &config.endpoints {
            let key =
                SigningKey::from_secret(&e.secret).map_err(|_| WebhookError::InvalidSecret {
                    whose: format!("webhook endpoint {}", e.url),
                })?;
            let route = Route {
                key,
                schedule: e.retry_schedule.clone(),
                timeout: e.timeout,
            };
            endpoints.insert(e.url.clone(), route);
        }
        let job_route = match &config.default_secret {
            Some(secret) => Some(Route {
                key: SigningKey::from_secret(secret).map_err(|_| WebhookError::InvalidSecret {
                    whose: "webhook_secret".to_owned(),
                })?,
                schedule: config.job_retry_schedule.clone(),
                timeout: config.job_timeout,
            }),
            None => None,
        };
        let trusted = client_builder().build(connector(GaiResolver::new())?);
        let public = client_builder().build(connector(PublicResolver)?);
        let (attempts, _) = broadcast::channel(256);
        // On a shared store, deliveries are claimed for longer than any
        // attempt can take (its timeout, bounded by `validate`), so another
        // process's dispatcher does not post one that is in flight here; a
        // dispatcher that dies mid-attempt leaves its claims to expire.
        let longest = endpoints
            .values()
            .chain(job_route.as_ref())
            .map(|r| r.timeout)
            .max()
            .unwrap_or_default();
        let claim_for = store
            .capabilities()
            .shared
            .then(|| longest.saturating_add(CLAIM_MARGIN));
        Ok(Self {
            shared: Shared {
                store,
                claim_for,
                clock: Arc::new(SystemClock),
                endpoints,
                job_route,
                allow_private: config.allow_private,
                trusted,
                public,
                attempts,
                health: Arc::new(HealthCell::new()),
            },
            wake: None,
            concurrency: config.concurrency,
            max_idle: DEFAULT_MAX_IDLE,
        })
    }

    /// Reads "now" (for `webhook-timestamp` and `next_attempt_at`) from
    /// `clock`. Timers still run on tokio's time.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.shared.clock = clock;
        self
    }

    /// Wakes up whenever `latest` changes: pass
    /// [`EventBus::latest`](crate::EventBus::latest) so new deliveries go
    /// out at once instead of at the next look at the store.
    pub fn wake_on(mut self, latest: watch::Receiver<u64>) -> Self {
        self.wake = Some(latest);
        self
    }

    /// Looks at the store at least this often even without a wake-up
    /// (default [`DEFAULT_MAX_IDLE`]). Refused below 1 ms, which would keep
    /// the store busy for nothing; [`Duration::MAX`] means never.
    pub fn max_idle(mut self, every: Duration) -> Result<Self, WebhookError> {
        if every < Duration::from_millis(1) {
            return Err(WebhookError::InvalidSetting {
                setting: "webhook dispatcher max_idle".to_owned(),
                reason: format!("must be at least 1ms, not {every:?}"),
            });
        }
        self.max_idle = every;
        Ok(self)
    }

    /// Every delivery row after an attempt was recorded (status, attempts,
    /// last error...), for metrics and tests. Receivers that lag lose the
    /// oldest rows; the store has them all.
    pub fn attempts(&self) -> broadcast::Receiver<Delivery> {
        self.shared.attempts.subscribe()
    }

    /// Attempts every delivery that is due now, once, and returns how many
    /// were attempted. The running loop of [`spawn`](Self::spawn) does the
    /// same continuously; this is for one-shot use and tests.
    ///
    /// It reads the outbox `concurrency` rows at a time and attempts each
    /// page's deliveries at once, so neither memory nor connections grow
    /// with the backlog. A delivery that fails with a zero retry delay is
    /// due again at once; it is not attempted twice, and it ends the run
    /// when nothing new is left in front of it.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let shared = &self.shared;
        let mut attempted: HashSet<DeliveryId> = HashSet::new();
        loop {
            let due = shared.due(self.concurrency, 0).await?;
            let mut attempts: futures::stream::FuturesUnordered<_> = due
                .into_iter()
                .filter(|d| attempted.insert(d.id))
                .map(|d| shared.deliver(d))
                .collect();
            if attempts.is_empty() {
                return Ok(attempted.len());
            }
            while futures::StreamExt::next(&mut attempts).await.is_some() {}
        }
    }

    /// Starts the dispatch loop on the tokio runtime, supervised: a panic
    /// in it is logged, counted in [`DispatcherHandle::health`], and the
    /// loop starts again after a short pause.
    pub fn spawn(self) -> DispatcherHandle {
        let (stop_tx, stop_rx) = watch::channel(false);
        let attempts = self.shared.attempts.clone();
        let health = Arc::clone(&self.shared.health);
        let task = tokio::spawn(self.supervise(stop_rx));
        DispatcherHandle {
            stop: stop_tx,
            task: tokio::sync::Mutex::new(Some(task)),
            attempts,
            health,
        }
    }

    /// Runs the loop until told to stop, and again after each panic.
    async fn supervise(self, stop: watch::Receiver<bool>) {
        let Self {
            shared,
            wake,
            concurrency,
            max_idle,
        } = self;
        let shared = Arc::new(shared);
        let health = Arc::clone(&shared.health);
        let _failed_unless_stopped = FailedUnlessStopped(&health);
        let mut st = LoopState {
            stop,
            wake,
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            store_failures: 0,
            panics_in_a_row: 0,
        };
        tracing::debug!(concurrency, "webhook dispatcher started");
        loop {
            // The loop's state lives in `st`, outside the future, and every
            // change to it is a single step, so a panic leaves it usable.
            let turn = AssertUnwindSafe(run_loop(&shared, &mut st, concurrency, max_idle));
            let Err(panic) = turn.catch_unwind().await else {
                break;
            };
            let message = panic_message(&*panic);
            st.panics_in_a_row = st.panics_in_a_row.saturating_add(1);
            let backoff = RESTART_BACKOFF
                .saturating_mul(2_u32.saturating_pow(st.panics_in_a_row - 1))
                .min(RESTART_BACKOFF_MAX);
            health.panicked(&message);
            health.set_state(TaskState::Restarting);
            tracing::error!(
                task = TASK_NAME,
                panic = %message,
                restart_in = ?backoff,
                "the webhook dispatcher panicked; restarting it"
            );
            tokio::select! {
                () = stopped(&mut st.stop) => break,
                () = tokio::time::sleep(backoff) => {}
            }
            health.set_state(TaskState::Running);
        }
        // Let attempts in flight finish and record their outcome (each is
        // bounded by its timeout), so a restart sends nothing twice.
        while let Some(joined) = st.tasks.join_next().await {
            if let Err(e) = joined {
                shared.attempt_task_failed(&e);
            }
        }
        health.set_state(TaskState::Stopped);
        tracing::debug!("webhook dispatcher stopped");
    }
}

/// The name of the dispatcher's task in health reports.
const TASK_NAME: &str = "webhook-dispatcher";

/// The pause before the loop starts again after a panic; it doubles with
/// each panic in a row, up to [`RESTART_BACKOFF_MAX`], so a loop that
/// panics at once every time costs little.
const RESTART_BACKOFF: Duration = Duration::from_millis(100);

/// The longest pause before a restart.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the dispatch loop keeps from one turn to the next. It lives outside
/// the loop's future, so a panic in the loop loses none of it: attempts in
/// flight go on and are joined by the restarted loop.
struct LoopState {
    /// Becomes `true` (or closes) when the loop must stop.
    stop: watch::Receiver<bool>,
    /// New events; `None` without a wake-up source.
    wake: Option<watch::Receiver<u64>>,
    /// The attempts in flight.
    tasks: JoinSet<()>,
    /// The delivery each attempt task works on, by task.
    in_flight: HashMap<task::Id, DeliveryId>,
    /// Failed reads of the outbox in a row; sets the wait before the next.
    store_failures: u32,
    /// Panics of the loop since it last read the outbox; sets the pause
    /// before a restart.
    panics_in_a_row: u32,
}

/// The dispatch loop: start what is due, wait for the next due time, a
/// wake-up or a finished attempt, until told to stop.
async fn run_loop(
    shared: &Arc<Shared>,
    st: &mut LoopState,
    concurrency: usize,
    max_idle: Duration,
) {
    while !*st.stop.borrow() {
        let mut wait = max_idle;
        let free = concurrency.saturating_sub(st.in_flight.len());
        if free > 0 {
            match shared.fill(&mut st.in_flight, &mut st.tasks, free).await {
                Ok(next) => {
                    st.store_failures = 0;
                    st.panics_in_a_row = 0;
                    if let Some(next) = next {
                        wait = wait.min(next);
                    }
                }
                Err(e) => {
                    st.store_failures = st.store_failures.saturating_add(1);
                    // Back off while the store fails: 100 ms doubling up
                    // to `max_idle`.
                    let backoff =
                        Duration::from_millis(100).saturating_mul(1 << st.store_failures.min(10));
                    wait = wait.min(backoff);
                    tracing::warn!(error = %e, retry_in = ?wait, "webhook dispatcher cannot read the outbox");
                }
            }
        }
        tokio::select! {
            changed = st.stop.changed() => {
                // The handle was dropped: stop as if told to.
                if changed.is_err() {
                    break;
                }
            }
            Some(joined) = st.tasks.join_next_with_id(), if !st.tasks.is_empty() => {
                let task = match joined {
                    Ok((task, ())) => task,
                    // Its delivery is still pending in the store and goes
                    // out again.
                    Err(e) => {
                        shared.attempt_task_failed(&e);
                        e.id()
                    }
                };
                st.in_flight.remove(&task);
            }
            alive = changed(&mut st.wake) => {
                if !alive {
                    st.wake = None;
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Returns once `stop` is `true` or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the handle was dropped, which stops the loop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The dispatcher's [`TaskHealth`], shared by its loop, its attempts and
/// its handle.
#[derive(Debug)]
struct HealthCell(Mutex<TaskHealth>);

impl HealthCell {
    fn new() -> Self {
        Self(Mutex::new(TaskHealth::running(TASK_NAME)))
    }

    fn lock(&self) -> MutexGuard<'_, TaskHealth> {
        // Nothing panics while holding the lock; should something, the
        // counts are still worth reporting.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self) -> TaskHealth {
        self.lock().clone()
    }

    /// Counts a panic with `message`.
    fn panicked(&self, message: &str) {
        let mut health = self.lock();
        health.panics = health.panics.saturating_add(1);
        health.last_panic = Some(message.to_owned());
    }

    fn set_state(&self, state: TaskState) {
        self.lock().state = state;
    }
}

/// Marks the health `Failed` when dropped before it says `Stopped`: the
/// supervisor ended without being told to (it panicked outside the loop, or
/// the runtime dropped it), so nothing sends webhooks any more.
struct FailedUnlessStopped<'a>(&'a HealthCell);

impl Drop for FailedUnlessStopped<'_> {
    fn drop(&mut self) {
        let mut health = self.0.lock();
        if health.state != TaskState::Stopped {
            health.state = TaskState::Failed;
        }
    }
}

/// Waits for `wake` to change; `false` once its sender is gone. Never
/// returns without a wake-up source.
async fn changed(wake: &mut Option<watch::Receiver<u64>>) -> bool {
    match wake {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

fn client_builder() -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30));
    builder
}

impl Shared {
    /// Up to `free` due deliveries to start, besides the `in_flight` ones:
    /// claimed on a shared store (in-flight ones are claimed already, so
    /// they are not returned), read otherwise (in-flight ones are still
    /// due, so they are asked for too and filtered out by the caller).
    async fn due(&self, free: usize, in_flight: usize) -> Result<Vec<Delivery>, StoreError> {
        match self.claim_for {
            Some(lease) => self.store.claim_deliveries(free, lease).await,
            None => {
                self.store
                    .due_deliveries(free.saturating_add(in_flight))
                    .await
            }
        }
    }

    /// Starts up to `free` due deliveries that are not in flight yet, and
    /// says how long until the next one is due (`None`: wait for an attempt
    /// to finish or a wake-up).
    async fn fill(
        self: &Arc<Self>,
        in_flight: &mut HashMap<task::Id, DeliveryId>,
        tasks: &mut JoinSet<()>,
        free: usize,
    ) -> Result<Option<Duration>, StoreError> {
        // Due deliveries include those in flight (they are pending until
        // recorded), so ask for enough to find `free` new ones: at most
        // `concurrency` rows, which `WebhookConfig::validate` bounds.
        let due = self.due(free, in_flight.len()).await?;
        let busy: HashSet<DeliveryId> = in_flight.values().copied().collect();
        for (started, d) in due
            .into_iter()
            .filter(|d| !busy.contains(&d.id))
            .enumerate()
        {
            if started == free {
                // More are due than there are free slots: look again as soon
                // as a slot frees.
                return Ok(None);
            }
            let id = d.id;
            let shared = Arc::clone(self);
            let handle = tasks.spawn(async move { shared.deliver(d).await });
            in_flight.insert(handle.id(), id);
        }
        let Some(next) = self.store.next_delivery_at().await? else {
            return Ok(None);
        };
        let until = next - self.clock.now();
        if until.is_positive() {
            return Ok(Some(until.try_into().unwrap_or(Duration::MAX)));
        }
        if in_flight.is_empty() {
            // Due by the store's clock but not returned as due: the clocks
            // disagree a little. Look again shortly rather than spin.
            return Ok(Some(Duration::from_millis(50)));
        }
        // What is due is in flight; its outcome decides the next time.
        Ok(None)
    }

    /// One attempt of `d`, recorded in the store. A panic in the attempt is
    /// its failure, so a delivery that makes the dispatcher panic is retried
    /// on its schedule, never in a tight loop.
    async fn deliver(&self, d: Delivery) {
        let outcome = match AssertUnwindSafe(self.attempt(&d)).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => self.attempt_panicked(&d, &panic_message(&*panic)),
        };
        match &outcome {
            AttemptOutcome::Delivered { status } => {
                tracing::debug!(id = %d.id, url = %d.url, status, "webhook delivered");
            }
            AttemptOutcome::Retry {
                error,
                next_attempt_at,
                ..
            } => {
                tracing::info!(id = %d.id, url = %d.url, %error, %next_attempt_at, "webhook attempt failed; will retry");
            }
            AttemptOutcome::Failed { error, .. } => {
                tracing::warn!(id = %d.id, url = %d.url, %error, "webhook delivery failed for good");
            }
        }
        match self.store.record_attempt(d.id, outcome).await {
            Ok(row) => {
                let _ = self.attempts.send(row);
            }
            // NotFound or Conflict: someone else ended it; nothing to do.
            // Anything else: it stays pending and is sent again later, with
            // the same webhook-id, so receivers can tell.
            Err(e) => {
                tracing::warn!(id = %d.id, error = %e, "could not record a webhook attempt");
            }
        }
    }

    /// The outcome of an attempt of `d` that panicked with `message`.
    fn attempt_panicked(&self, d: &Delivery, message: &str) -> AttemptOutcome {
        self.health.panicked(message);
        tracing::error!(task = TASK_NAME, id = %d.id, url = %d.url, panic = %message, "a webhook attempt panicked");
        let error = format!("the attempt panicked: {message}");
        match self.route(d) {
            Ok((route, _)) => retry_or_fail(d, route, self.clock.now(), None, error, None),
            Err(_) => AttemptOutcome::Failed {
                status: None,
                error,
            },
        }
    }

    /// An attempt task that ended without recording its outcome: it
    /// panicked past [`deliver`](Self::deliver)'s guard (in the store), or
    /// was cancelled.
    fn attempt_task_failed(&self, e: &task::JoinError) {
        if e.is_panic() {
            self.health.panicked(&e.to_string());
        }
        tracing::error!(task = TASK_NAME, error = %e, "a webhook attempt task failed");
    }

    /// How `d` is signed, retried and timed out, and whether its target is
    /// trusted with any address; `Err` says why it cannot be sent at all.
    fn route(&self, d: &Delivery) -> Result<(&Route, bool), String> {
        match d.target {
            DeliveryTarget::Endpoint => match self.endpoints.get(&d.url) {
                Some(route) => Ok((route, true)),
                None => Err(format!(
                    "no configured webhook endpoint has the URL {} any more",
                    d.url
                )),
            },
            DeliveryTarget::Job => match &self.job_route {
                Some(route) => Ok((route, self.allow_private)),
                None => Err(
                    "no webhook secret is configured for per-job webhook_url deliveries".to_owned(),
                ),
            },
        }
    }

    /// Sends `d` once and says what came of it.
    async fn attempt(&self, d: &Delivery) -> AttemptOutcome {
        let failed = |error: String| AttemptOutcome::Failed {
            status: None,
            error,
        };
        let (route, trusted) = match self.route(d) {
            Ok(found) => found,
            Err(reason) => return failed(reason),
        };
        // Checked again at delivery time: configuration or DNS may have
        // changed since the job was enqueued.
        let target = match Target::parse(&d.url) {
            Ok(t) => t,
            Err(reason) => return failed(reason),
        };
        if !trusted && let Err(reason) = super::check_webhook_url(&d.url, false) {
            return failed(reason);
        }
        if target.https && !cfg!(feature = "tls") {
            return failed(
                "https webhook URLs need the `tls` feature of jobqueue-events".to_owned(),
            );
        }

        let id = d.id.to_string();
        let body = event_json_string(&d.event);
        let timestamp = self.clock.now().unix_timestamp();
        let signature = route.key.sign(&id, timestamp, body.as_bytes());
        let request = Request::builder()
            .method(Method::POST)
            .uri(&d.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, USER_AGENT)
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => return failed(format!("cannot build a request to {}: {e}", d.url)),
        };
        let sent = if trusted {
            tokio::time::timeout(route.timeout, self.trusted.request(request)).await
        } else {
            tokio::time::timeout(route.timeout, self.public.request(request)).await
        };
        // Delays count from when the attempt failed, not from when it began:
        // a receiver that times out must not be tried again at once.
        let now = self.clock.now();
        match sent {
            Err(_) => retry_or_fail(
                d,
                route,
                now,
                None,
                format!("no answer within {:?}", route.timeout),
                None,
            ),
            Ok(Err(e)) => {
                if let Some(reason) = find_forbidden(&e) {
                    return failed(reason);
                }
                retry_or_fail(d, route, now, None, error_chain(&e), None)
            }
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_success() {
                    AttemptOutcome::Delivered {
                        status: status.as_u16(),
                    }
                } else if status == StatusCode::GONE {
                    AttemptOutcome::Failed {
                        status: Some(status.as_u16()),
                        error: "410 Gone: the receiver asked for no more deliveries".to_owned(),
                    }
                } else {
                    let wait = retry_after(response.headers(), now);
                    retry_or_fail(
                        d,
                        route,
                        now,
                        Some(status.as_u16()),
                        format!("HTTP {status}"),
                        wait,
                    )
                }
            }
        }
    }
}

const USER_AGENT: &str = concat!("jobqueue-webhooks/", env!("CARGO_PKG_VERSION"));

/// `Retry` after the schedule's next delay (or `retry_after` when longer),
/// or `Failed` when the schedule is used up or the next attempt would be
/// later than a store can hold.
fn retry_or_fail(
    d: &Delivery,
    route: &Route,
    now: OffsetDateTime,
    status: Option<u16>,
    error: String,
    retry_after: Option<Duration>,
) -> AttemptOutcome {
    // `attempts` counts the attempts before this one: the first failure
    // waits the first delay.
    let made = usize::try_from(d.attempts).unwrap_or(usize::MAX);
    let Some(delay) = route.schedule.get(made) else {
        return AttemptOutcome::Failed {
            status,
            error: format!(
                "{error} (gave up after {} attempts)",
                made.saturating_add(1)
            ),
        };
    };
    let delay = (*delay).max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER));
    match after(now, delay) {
        Some(next_attempt_at) => AttemptOutcome::Retry {
            status,
            error,
            next_attempt_at,
        },
        // Only a clock near the end of year 9999 gets here (delays are
        // bounded): a time the store would refuse must never be written.
        None => AttemptOutcome::Failed {
            status,
            error: format!(
                "{error} (gave up: the next attempt, {delay:?} after {}, would be later \
                 than {}, the latest time a store keeps)",
                timefmt::format(now),
                timefmt::format(timefmt::MAX)
            ),
        },
    }
}

/// `now + delay`, if that is a time a store can hold (see [`timefmt`]).
fn after(now: OffsetDateTime, delay: Duration) -> Option<OffsetDateTime> {
    let delay = time::Duration::try_from(delay).ok()?;
    now.checked_add(delay).filter(|t| timefmt::in_range(*t))
}

/// The wait a `Retry-After` header asks for: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    let value = headers
        .get(header::RETRY_AFTER)
        .map(HeaderValue::to_str)?
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    (at - now).try_into().ok()
}

/// An error with its sources, `outer: inner: innermost`.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Controls a running [`Dispatcher`]. Dropping it stops the loop too, but
/// without waiting for it.
#[derive(Debug)]
pub struct DispatcherHandle {
    stop: watch::Sender<bool>,
    /// The supervisor's task, until [`shutdown`](Self::shutdown) joins it.
    task: tokio::sync::Mutex<Option<task::JoinHandle<()>>>,
    attempts: broadcast::Sender<Delivery>,
    health: Arc<HealthCell>,
}

impl DispatcherHandle {
    /// See [`Dispatcher::attempts`].
    pub fn attempts(&self) -> broadcast::Receiver<Delivery> {
        self.attempts.subscribe()
    }

    /// How the dispatcher is doing, as task `"webhook-dispatcher"`:
    /// `Running`; `Restarting` for the short pause after a panic of its
    /// loop; `Stopped` after [`shutdown`](Self::shutdown); `Failed` if its
    /// task ended without being told to. `panics` counts panics of the loop
    /// and of attempts alike.
    pub fn health(&self) -> TaskHealth {
        self.health.get()
    }

    /// Stops looking for new deliveries, waits for the attempts in flight
    /// to finish and be recorded (each is bounded by its timeout), and
    /// returns when the loop is gone. Pending deliveries stay in the store
    /// for the next dispatcher. A second call waits for the first.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        // Held while joining, so a second caller returns only once the
        // loop is gone too.
        let mut task = self.task.lock().await;
        if let Some(joined) = task.take()
            && let Err(e) = joined.await
        {
            tracing::error!(task = TASK_NAME, error = %e, "the webhook dispatcher task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use jobqueue_core::outbox::deliveries_for;
    use jobqueue_core::{Event, EventData, JobId, MemoryStore};
    use time::macros::datetime;

    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn route(schedule: &[Duration]) -> Route {
        Route {
            key: SigningKey::from_secret(SECRET).unwrap(),
            schedule: schedule.to_vec(),
            timeout: Duration::from_secs(1),
        }
    }

    fn delivery(now: OffsetDateTime) -> Delivery {
        let event = Event {
            seq: 1,
            job_id: Some(JobId::new()),
            pipeline: "p".to_owned(),
            at: now,
            data: EventData::Deleted {},
        };
        deliveries_for(&event, &[], Some("http://example.com/"), now).remove(0)
    }

    fn error_of(outcome: &AttemptOutcome) -> &str {
        match outcome {
            AttemptOutcome::Failed { error, .. } => error,
            other => panic!("not failed: {other:?}"),
        }
    }

    #[test]
    fn retries_are_scheduled_from_now() {
        let now = datetime!(2030-01-01 00:00:00 UTC);
        let outcome = retry_or_fail(
            &delivery(now),
            &route(&[Duration::from_secs(5)]),
            now,
            Some(500),
            "HTTP 500".to_owned(),
            Some(Duration::from_secs(2)),
        );
        let AttemptOutcome::Retry {
            next_attempt_at, ..
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(next_attempt_at, datetime!(2030-01-01 00:00:05 UTC));
    }

    #[test]
    fn a_next_attempt_past_what_a_store_keeps_fails_the_delivery() {
        let now = datetime!(2030-01-01 00:00:00 UTC);
        // Neither a delay nor a `Retry-After` too large for `OffsetDateTime`
        // panics...
        for (delay, retry_after) in [
            (Duration::MAX, None),
            (Duration::from_secs(u64::MAX / 2), None),
            (Duration::ZERO, Some(Duration::MAX)),
        ] {
            let outcome = retry_or_fail(
                &delivery(now),
                &route(&[delay]),
                now,
                Some(503),
                "HTTP 503".to_owned(),
                retry_after,
            );
            if retry_after.is_some() {
                // ...a long `Retry-After` is cut to a day...
                assert!(
                    matches!(outcome, AttemptOutcome::Retry { .. }),
                    "{outcome:?}"
                );
            } else {
                assert!(error_of(&outcome).contains("gave up"), "{outcome:?}");
            }
        }
        // ...and a clock near the end of year 9999 never yields a time past it.
        let late = timefmt::MAX - Duration::from_secs(1);
        let outcome = retry_or_fail(
            &delivery(late),
            &route(&[Duration::from_secs(3600)]),
            late,
            None,
            "no answer".to_owned(),
            None,
        );
        let error = error_of(&outcome);
        assert!(error.contains("9999-12-31T23:59:59.999999Z"), "{error}");
        assert!(error.starts_with("no answer"), "{error}");
    }

    #[test]
    fn max_idle_is_at_least_a_millisecond() {
        let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
        let dispatcher = || Dispatcher::new(store.clone(), &WebhookConfig::default()).unwrap();
        let err = dispatcher().max_idle(Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("max_idle"), "{err}");
        assert!(dispatcher().max_idle(Duration::from_micros(999)).is_err());
        assert!(dispatcher().max_idle(Duration::from_millis(1)).is_ok());
        assert!(dispatcher().max_idle(Duration::MAX).is_ok());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = datetime!(2015-10-21 07:28:00 UTC);
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(120)));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:30:00 GMT"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(120)));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:00:00 GMT"),
        );
        assert_eq!(
            retry_after(&headers, now),
            None,
            "a past date asks for no wait"
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }
}
