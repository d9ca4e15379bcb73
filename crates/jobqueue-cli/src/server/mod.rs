//! `jobqueue serve`: from the config to a running queue behind the API, and
//! back down on a signal.
//!
//! 1. [`Settings::resolve`] reads the config file (if any) and lays the
//!    command-line flags over it. Without a config the built-in `demo`
//!    pipeline runs on `./jobqueue.db`.
//! 2. [`Server::start`] binds the listener, opens the SQLite store (which
//!    takes the database's lock), sweeps the process groups a crashed
//!    server left behind ([`Records::sweep`]), and starts the
//!    [`JobQueue`] with one [`CommandPhase`] per configured phase; the
//!    queue then recovers the interrupted jobs and starts claiming.
//! 3. [`Server::run`] announces `listening on http://HOST:PORT` on stderr
//!    and serves the API (`http.rs`) until the shutdown signal. Then the
//!    queue shuts down first (stop claiming, let running phases finish
//!    within `shutdown_timeout`, stop the rest as interrupted), so API
//!    clients see those last events; then the API stops.

mod http;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use jobqueue::postgres::{PostgresOptions, PostgresStore};
use jobqueue::sqlite::{SqliteOptions, SqliteStore};
use jobqueue::{JobQueue, JobStore, Pipeline, RecoverScope};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::command::{CommandPhase, Launcher, Records};
use crate::config::{Config, ConfigErrors, PipelineConfig, Store, check_listen};
use crate::demo;

/// What `jobqueue serve` was given on its command line.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--db FILE`: the SQLite file, over the config's `[store]`.
    pub db: Option<PathBuf>,
    /// `--postgres URL`, over the config's `[store]`.
    pub postgres: Option<String>,
    /// `--listen ADDR`, over the config's `listen`.
    pub listen: Option<String>,
}

/// The server's settings: the config with the flags laid over it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The checked config.
    pub config: Config,
    /// Run the built-in `demo` pipeline (no config file was given).
    pub demo: bool,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The config file has errors.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// A command-line flag is wrong.
    #[error("{0}")]
    Flag(String),
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {message}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The database cannot be opened.
    #[error("cannot open the database {path}: {message}")]
    Store {
        /// The file, or the PostgreSQL URL without its password.
        path: String,
        /// Why.
        message: String,
    },
    /// The queue could not start.
    #[error("cannot start the queue: {0}")]
    Queue(String),
    /// Something of the operating system failed (process records, the
    /// executable's path, signals).
    #[error("{what}: {message}")]
    System {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
    /// The API stopped with an error.
    #[error("the HTTP server failed: {0}")]
    Http(String),
}

impl Settings {
    /// Reads the config file named by `opts` (if any) and lays the flags
    /// over it. Paths of flags are taken from the current directory, paths
    /// in the file from the file's directory.
    pub fn resolve(opts: &ServeOptions) -> Result<Self, ServeError> {
        let (mut config, demo) = match &opts.config {
            Some(path) => (Config::load(path)?, false),
            None => (Config::default(), true),
        };
        if let Some(listen) = &opts.listen {
            check_listen(listen).map_err(|e| ServeError::Flag(format!("--listen: {e}")))?;
            config.listen = listen.clone();
        }
        if let Some(db) = &opts.db {
            config.store = Store::Sqlite(db.clone());
        }
        if let Some(url) = &opts.postgres {
            config.store = Store::Postgres(url.clone());
        }
        Ok(Self { config, demo })
    }
}

/// What the API needs from the config.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// When set, every route but `GET /health` needs it.
    pub token: Option<String>,
    /// The largest request body, in bytes.
    pub max_body: usize,
}

/// Resolves when the API should stop: after the queue has shut down.
pub type HttpShutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A started server: the queue runs, the listener is bound.
#[derive(Debug)]
pub struct Server {
    queue: JobQueue,
    listener: TcpListener,
    api: ApiSettings,
}

/// The pipelines of `settings`: the configured ones, or `demo`.
fn pipelines(settings: &Settings, launcher: &Arc<Launcher>) -> Vec<Pipeline> {
    if settings.demo {
        return vec![demo::pipeline()];
    }
    settings
        .config
        .pipelines
        .iter()
        .map(|p| pipeline(p, launcher))
        .collect()
}

/// One configured pipeline, its phases commands.
pub fn pipeline(config: &PipelineConfig, launcher: &Arc<Launcher>) -> Pipeline {
    let mut pipeline = Pipeline::new(&config.name).retry(config.retry);
    if let Some(t) = config.timeout {
        pipeline = pipeline.attempt_timeout(t);
    }
    if let Some(n) = config.concurrency {
        pipeline = pipeline.concurrency(n);
    }
    for phase in &config.phases {
        let command = CommandPhase::new(&phase.name, phase.command.clone(), launcher.clone())
            .env(phase.env.clone())
            .workdir(&phase.workdir);
        pipeline = pipeline.phase_with_timeout(command, phase.timeout);
    }
    pipeline
}

impl Server {
    /// Binds the listener, opens the store, sweeps what a crashed server
    /// left running, and starts the queue. Commands are supervised by
    /// `launcher`'s program.
    pub async fn start(settings: Settings, launcher: Launcher) -> Result<Self, ServeError> {
        let config = &settings.config;
        // Bound first: a port in use is reported before the database is
        // touched and any interrupted job is recovered.
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| ServeError::Listen {
                addr: config.listen.clone(),
                message: e.to_string(),
            })?;
        let (store, database, launcher, recover): (Arc<dyn JobStore>, String, _, _) =
            match &config.store {
                Store::Sqlite(path) => {
                    let store = open_sqlite(path).await?;
                    // The store holds the database's lock now: no live
                    // server owns the records beside it, and no job has
                    // been recovered yet.
                    let records = Records::beside(path);
                    let swept = records.sweep().map_err(|e| ServeError::System {
                        what: "cannot sweep the process records",
                        message: format!("{}: {e}", records.dir().display()),
                    })?;
                    if swept > 0 {
                        tracing::warn!(
                            groups = swept,
                            "killed commands left running by a server that crashed"
                        );
                    }
                    let launcher = Arc::new(launcher.record_in(records));
                    (
                        store,
                        path.display().to_string(),
                        launcher,
                        RecoverScope::All,
                    )
                }
                Store::Postgres(url) => {
                    // Other servers may share the database, and this
                    // machine: no records to sweep (their commands are not
                    // ours), and running jobs are recovered only when their
                    // lease expired (their server is gone).
                    let store = open_postgres(url, config.concurrency).await?;
                    (
                        store,
                        redact(url),
                        Arc::new(launcher),
                        RecoverScope::ExpiredLeases,
                    )
                }
            };
        let mut builder = JobQueue::builder()
            .store(store)
            .recover(recover)
            .concurrency(config.concurrency)
            .shutdown_timeout(config.shutdown_timeout)
            .lease(config.lease)
            .webhooks(config.webhooks.clone());
        if let Some(retention) = config.retention {
            builder = builder.retention(retention);
        }
        for schedule in &config.schedules {
            builder = builder.schedule(schedule.clone());
        }
        for p in pipelines(&settings, &launcher) {
            builder = builder.pipeline(p);
        }
        let queue = builder
            .start()
            .await
            .map_err(|e| ServeError::Queue(e.to_string()))?;
        if !settings.demo && settings.config.pipelines.is_empty() {
            tracing::warn!("the config defines no pipelines: every enqueue will be refused");
        }
        tracing::info!(
            %database,
            pipelines = ?settings.config.pipelines.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            demo = settings.demo,
            "queue started"
        );
        Ok(Self {
            queue,
            listener,
            api: ApiSettings {
                token: settings.config.token.clone(),
                max_body: settings.config.max_body,
            },
        })
    }

    /// The running queue.
    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Announces the address, serves the API with `http` until `shutdown`
    /// resolves, then shuts the queue down and, after it, the API.
    pub async fn run<H, F>(
        self,
        http: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError>
    where
        H: FnOnce(TcpListener, JobQueue, ApiSettings, HttpShutdown) -> F,
        F: Future<Output = io::Result<()>> + Send + 'static,
    {
        let addr = self.local_addr().map_err(|e| ServeError::Listen {
            addr: "the bound socket".into(),
            message: e.to_string(),
        })?;
        let (stop_http, http_stopped) = oneshot::channel::<()>();
        let http_shutdown: HttpShutdown = Box::pin(async move {
            let _ = http_stopped.await;
        });
        let mut api = tokio::spawn(http(
            self.listener,
            self.queue.clone(),
            self.api,
            http_shutdown,
        ));
        // The listener is bound and listening: connections are accepted
        // from here on (the kernel queues them until the API takes them).
        eprintln!("listening on http://{addr}");
        tokio::select! {
            ended = &mut api => {
                // The API stopped by itself: that is an error of the server.
                self.queue.shutdown().await;
                return Err(ServeError::Http(match ended {
                    Ok(Ok(())) => "it stopped before the server was told to".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                }));
            }
            () = shutdown => {}
        }
        tracing::info!("shutting down: no new jobs start; running phases may finish");
        self.queue.shutdown().await;
        let _ = stop_http.send(());
        match api.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Http(e.to_string())),
            Err(e) => Err(ServeError::Http(e.to_string())),
        }
    }
}

/// Opens the SQLite store at `path`, off the async threads (it checks the
/// file and applies migrations).
async fn open_sqlite(path: &std::path::Path) -> Result<Arc<dyn JobStore>, ServeError> {
    let store_error = |message: String| ServeError::Store {
        path: path.display().to_string(),
        message,
    };
    let opening = path.to_path_buf();
    let store =
        tokio::task::spawn_blocking(move || SqliteStore::open(opening, SqliteOptions::default()))
            .await
            .map_err(|e| store_error(e.to_string()))?
            .map_err(|e| store_error(e.to_string()))?;
    Ok(Arc::new(store))
}

/// Connects to the PostgreSQL database at `url` (and migrates its schema),
/// with a pool sized for `concurrency` running jobs: each writes its phases
/// and renews its lease, and a heartbeat that waits for a connection behind
/// other writes can let a live worker's lease expire. Capped, so that a few
/// servers stay well within PostgreSQL's default of 100 connections.
async fn open_postgres(url: &str, concurrency: usize) -> Result<Arc<dyn JobStore>, ServeError> {
    let pool = concurrency.saturating_add(4).clamp(4, 24);
    let store = PostgresStore::connect(url, PostgresOptions::default().max_connections(pool))
        .await
        .map_err(|e| ServeError::Store {
            path: redact(url),
            message: e.to_string(),
        })?;
    Ok(Arc::new(store))
}

/// `url` without the password it may carry, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `jobqueue serve`: runs until SIGINT or SIGTERM, then shuts down in order
/// and returns `Ok`. A second signal during the shutdown exits at once
/// (status 130); the jobs still running then resume at the next start.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let settings = Settings::resolve(&opts)?;
    let launcher = Launcher::current_exe().map_err(|e| ServeError::System {
        what: "cannot find the jobqueue executable",
        message: e.to_string(),
    })?;
    // Handlers before the announcement: a signal right after it is ours.
    let shutdown = shutdown_signal(settings.config.shutdown_timeout)?;
    let server = Server::start(settings, launcher).await?;
    server.run(http::serve, shutdown).await
}

/// Resolves at the first SIGINT or SIGTERM; a second one exits the process.
fn shutdown_signal(timeout: std::time::Duration) -> Result<impl Future<Output = ()>, ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind| {
        signal(kind).map_err(|e| ServeError::System {
            what: "cannot install the signal handlers",
            message: e.to_string(),
        })
    };
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    let (first, first_seen) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!(
            "shutting down: running phases have {} to finish; a second signal exits at once",
            humantime::format_duration(timeout)
        );
        let _ = first.send(());
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("second signal: exiting now; running jobs resume at the next start");
        std::process::exit(130);
    });
    Ok(async move {
        let _ = first_seen.await;
    })
}
