//! The server's config file: TOML read into [`Config`], every error reported
//! with its place.
//!
//! [`Config::load`] reads a file, [`Config::parse`] a text. Unknown keys are
//! errors; durations are written with their unit (`500ms`, `2s`, `5m`, `3h`,
//! `7d`) and sizes with theirs (`512KiB`, `1MiB`); paths are relative to the
//! directory of the config file. A file with errors gives [`ConfigErrors`],
//! which lists each of them as `FILE:LINE:COLUMN: message`.
//!
//! ```
//! let config = jobqueue_cli::config::Config::parse(
//!     r#"
//!     concurrency = 4
//!     [pipelines.build]
//!     [[pipelines.build.phases]]
//!     name = "compile"
//!     command = ["make"]
//!     "#,
//!     std::path::Path::new("/srv/jobs"),
//!     "jobs.toml",
//! )?;
//! assert_eq!(config.concurrency, 4);
//! assert_eq!(config.pipelines[0].phases[0].workdir, std::path::Path::new("/srv/jobs"));
//! # Ok::<(), jobqueue_cli::config::ConfigErrors>(())
//! ```

mod raw;
mod recover;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jobqueue::events::webhook::{DEFAULT_RETRY_SCHEDULE, DEFAULT_TIMEOUT};
use jobqueue::runtime::RetentionConfig;
use jobqueue::{Endpoint, RetryPolicy, Schedule, WebhookConfig};

use self::raw::{RawConfig, RawPipeline, RawSchedule, RawStore, RawWebhook};
use self::recover::{Damage, Located, read_all};
pub(crate) use self::values::check_listen;

/// Where the server listens without a config or `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
/// The SQLite file without a `[store]` (beside the config file) or a config
/// (in the current directory).
pub const DEFAULT_DB: &str = "jobqueue.db";
/// Running jobs at most.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// How long a shutdown lets running phases finish.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body the API takes.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// How long a claim lasts without a heartbeat.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Names the server sets in every phase's environment; `env` may not set them.
pub const RESERVED_ENV: [&str; 5] = [
    "JOBQUEUE_JOB_ID",
    "JOBQUEUE_PIPELINE",
    "JOBQUEUE_PHASE",
    "JOBQUEUE_PHASE_INDEX",
    "JOBQUEUE_ATTEMPT",
];

/// A checked server configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// `HOST:PORT` to listen on.
    pub listen: String,
    /// When set, every route but `GET /health` needs it as a bearer token.
    pub token: Option<String>,
    /// Running jobs at most.
    pub concurrency: usize,
    /// How long a shutdown lets running phases finish before stopping them.
    pub shutdown_timeout: Duration,
    /// The largest request body the API takes, in bytes.
    pub max_body: usize,
    /// Where jobs are kept.
    pub store: Store,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// When finished jobs become stale and are deleted; `None` keeps them.
    pub retention: Option<RetentionConfig>,
    /// Endpoints, the secret for per-job `webhook_url`s, private targets.
    pub webhooks: WebhookConfig,
    /// The pipelines, in name order.
    pub pipelines: Vec<PipelineConfig>,
    /// Periodic jobs of those pipelines, in the file's order.
    pub schedules: Vec<Schedule>,
}

/// Where jobs are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (accepted in the file; the server refuses it
    /// until the PostgreSQL store exists).
    Postgres(String),
}

/// One pipeline of commands.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PipelineConfig {
    /// Its name.
    pub name: String,
    /// Attempts and backoff.
    pub retry: RetryPolicy,
    /// The longest a whole attempt may take.
    pub timeout: Option<Duration>,
    /// At most this many of its jobs run at once.
    pub concurrency: Option<usize>,
    /// Its phases, in order.
    pub phases: Vec<PhaseConfig>,
}

/// One command phase.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PhaseConfig {
    /// Its name, unique in its pipeline.
    pub name: String,
    /// The program and its arguments (no shell is implied).
    pub command: Vec<String>,
    /// The longest one run may take.
    pub timeout: Option<Duration>,
    /// Added to the server's environment.
    pub env: Vec<(String, String)>,
    /// The directory the command runs in (absolute when the config file's
    /// directory was given as an absolute path).
    pub workdir: PathBuf,
}

impl Default for Config {
    /// The settings of `jobqueue serve` without a config file: `./jobqueue.db`,
    /// `127.0.0.1:7700`, no token, no webhooks, no pipelines (the server
    /// adds its built-in `demo`).
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            token: None,
            concurrency: DEFAULT_CONCURRENCY,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
            store: Store::Sqlite(PathBuf::from(DEFAULT_DB)),
            lease: DEFAULT_LEASE,
            retention: Some(RetentionConfig::default()),
            webhooks: WebhookConfig::default(),
            pipelines: Vec::new(),
            schedules: Vec::new(),
        }
    }
}

/// One error of a config file, at `line`:`column` (both 1-based; 0 when the
/// error has no place, like a file that cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The line, from 1.
    pub line: usize,
    /// The column in characters, from 1.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Every error of a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file as the user named it.
    pub file: String,
    /// Its errors, in the order of the file.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// One line per error: `FILE:LINE:COLUMN: message` (`FILE: message`
    /// without a place).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if e.line == 0 {
                write!(f, "{}: {}", self.file, e.message)?;
            } else {
                write!(f, "{}:{}:{}: {}", self.file, e.line, e.column, e.message)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads and checks the config file at `path`. Relative paths in it are
    /// taken from the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let fail = |message: String| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                line: 0,
                column: 0,
                message,
            }],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let absolute =
            std::path::absolute(path).map_err(|e| fail(format!("cannot resolve: {e}")))?;
        let dir = absolute.parent().unwrap_or(Path::new("/"));
        Self::parse(&text, dir, &file)
    }

    /// Checks the config `text`; relative paths in it are taken from `dir`,
    /// and errors name `file`.
    pub fn parse(text: &str, dir: &Path, file: &str) -> Result<Self, ConfigErrors> {
        let read = read_all::<RawConfig>(text);
        let mut errors = read.errors;
        let config = read
            .value
            .map(|raw| Checker::new(dir, &read.damage, &mut errors).check(raw));
        if errors.is_empty()
            && let Some(config) = config
        {
            // The layers below check these settings again when the server
            // starts; the checks above are meant to have found everything,
            // and this keeps `check-config` from passing what they refuse.
            let mut refused: Vec<String> = Vec::new();
            if let Err(e) = config.webhooks.validate() {
                refused.push(e.to_string());
            }
            for p in &config.pipelines {
                if let Err(e) = p.retry.validate() {
                    refused.push(format!("pipeline {:?}: {e}", p.name));
                }
            }
            if refused.is_empty() {
                return Ok(config);
            }
            return Err(ConfigErrors {
                file: file.to_owned(),
                errors: refused
                    .into_iter()
                    .map(|message| ConfigError {
                        line: 0,
                        column: 0,
                        message,
                    })
                    .collect(),
            });
        }
        errors.sort_by_key(|e| e.span.start);
        let lines = LineIndex::new(text);
        Err(ConfigErrors {
            file: file.to_owned(),
            errors: errors
                .into_iter()
                .map(|e| {
                    let (line, column) = lines.place(e.span.start);
                    ConfigError {
                        line,
                        column,
                        message: e.message,
                    }
                })
                .collect(),
        })
    }
}

/// Line starts of a text, to turn byte offsets into lines and columns.
struct LineIndex<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, starts }
    }

    /// The 1-based line and column (in characters) of byte `offset`.
    fn place(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|s| *s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }
}

/// The checks across values, and the turn from what was written into
/// [`Config`].
/// When a schedule of the file ticks.
enum Ticks {
    Cron(String),
    Every(Duration),
}

struct Checker<'a> {
    dir: &'a Path,
    damage: &'a Damage,
    errors: &'a mut Vec<Located>,
}

impl<'a> Checker<'a> {
    fn new(dir: &'a Path, damage: &'a Damage, errors: &'a mut Vec<Located>) -> Self {
        Self {
            dir,
            damage,
            errors,
        }
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(Located {
            span,
            message: message.into(),
        });
    }

    /// Reports that the table at `table` lacks `key`, unless the key was
    /// there and cut out for an error of its own.
    fn missing(&mut self, table: &Range<usize>, key: &str) {
        if !self.damage.cut(table, key) {
            self.error(table.clone(), format!("missing field `{key}`"));
        }
    }

    fn check(mut self, raw: RawConfig) -> Config {
        let (store, lease) = match raw.store {
            Some(store) => self.store(store),
            None => (Store::Sqlite(self.dir.join(DEFAULT_DB)), DEFAULT_LEASE),
        };
        let retention = match raw.retention {
            Some(r) if r.enabled == Some(false) => None,
            Some(r) => {
                let d = RetentionConfig::default();
                Some(RetentionConfig {
                    stale_after: r.stale_after.map_or(d.stale_after, |v| v.0),
                    delete_after: r.delete_after.map_or(d.delete_after, |v| v.0),
                    interval: r.interval.map_or(d.interval, |v| v.0),
                    ..d
                })
            }
            None => Some(RetentionConfig::default()),
        };
        let endpoints = self.webhooks(raw.webhooks);
        let webhooks = WebhookConfig {
            endpoints,
            default_secret: raw.webhook_secret.map(|s| s.0),
            allow_private: raw.allow_private_webhook_urls.unwrap_or(false),
            ..WebhookConfig::default()
        };
        let pipelines: Vec<PipelineConfig> = raw
            .pipelines
            .into_iter()
            .map(|(name, pipeline)| self.pipeline(name, pipeline))
            .collect();
        let schedules = self.schedules(raw.schedules, &pipelines);
        Config {
            listen: raw
                .listen
                .map_or_else(|| DEFAULT_LISTEN.to_owned(), |l| l.0),
            token: raw.token.map(|t| t.0),
            concurrency: raw.concurrency.map_or(DEFAULT_CONCURRENCY, |c| c.0),
            shutdown_timeout: raw
                .shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.0),
            max_body: raw.max_body.map_or(DEFAULT_MAX_BODY, |s| s.0),
            store,
            lease,
            retention,
            webhooks,
            pipelines,
            schedules,
        }
    }

    fn schedules(
        &mut self,
        raw: Vec<toml::Spanned<RawSchedule>>,
        pipelines: &[PipelineConfig],
    ) -> Vec<Schedule> {
        let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
        let mut schedules = Vec::new();
        for entry in raw {
            let span = entry.span();
            let entry = entry.into_inner();
            let name = match entry.name {
                Some(name) => {
                    let (name_span, name) = (name.span(), name.into_inner().0);
                    if seen.insert(name.clone(), name_span.clone()).is_some() {
                        self.error(name_span, format!("schedule {name:?} is declared twice"));
                    }
                    Some(name)
                }
                None => {
                    self.missing(&span, "name");
                    None
                }
            };
            let pipeline = match entry.pipeline {
                Some(p) => {
                    let (p_span, p) = (p.span(), p.into_inner());
                    if !pipelines.iter().any(|known| known.name == p) {
                        self.error(p_span, format!("unknown pipeline {p:?}"));
                    }
                    Some(p)
                }
                None => {
                    self.missing(&span, "pipeline");
                    None
                }
            };
            // A table that lost a key to an error of its own (a misspelt
            // `every`) is not also short of one.
            let ticks_cut = self.damage.touches(&span);
            let ticks = match (entry.cron, entry.every) {
                (Some(cron), None) => {
                    let (cron_span, cron) = (cron.span(), cron.into_inner());
                    // The expression alone, at its own place.
                    match Schedule::cron("-", &cron, "-").validate() {
                        Ok(()) => Some(Ticks::Cron(cron)),
                        Err(e) => {
                            self.error(cron_span, e);
                            None
                        }
                    }
                }
                (None, Some(every)) => Some(Ticks::Every(every.into_inner().0)),
                (cron, every) => {
                    if !ticks_cut {
                        let message = if cron.is_some() && every.is_some() {
                            "a schedule takes one of `cron` and `every`, not both"
                        } else {
                            "a schedule needs `cron = \"EXPRESSION\"` or `every = \"DURATION\"`"
                        };
                        self.error(span.clone(), message);
                    }
                    None
                }
            };
            let (Some(name), Some(pipeline), Some(ticks)) = (name, pipeline, ticks) else {
                continue;
            };
            let mut schedule = match ticks {
                Ticks::Cron(cron) => Schedule::cron(name.clone(), &cron, pipeline),
                Ticks::Every(period) => Schedule::every(name.clone(), period, pipeline),
            }
            .priority(entry.priority.unwrap_or(0));
            if let Some(input) = entry.input {
                match serde_json::to_value(input) {
                    Ok(input) => schedule = schedule.input(input),
                    Err(e) => self.error(span.clone(), format!("schedule {name:?}: input: {e}")),
                }
            }
            if let Err(e) = schedule.validate() {
                self.error(span, format!("schedule {name:?}: {e}"));
            }
            schedules.push(schedule);
        }
        schedules
    }

    fn store(&mut self, store: toml::Spanned<RawStore>) -> (Store, Duration) {
        let span = store.span();
        let store = store.into_inner();
        let lease = store.lease.map_or(DEFAULT_LEASE, |l| l.into_inner().0);
        let chosen = match (store.sqlite, store.postgres) {
            (Some(path), None) => {
                let (path_span, path) = (path.span(), path.into_inner());
                let path = self.dir.join(path);
                match path.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => {
                        self.error(
                            path_span,
                            format!(
                                "the directory of the database, {}, does not exist",
                                parent.display()
                            ),
                        );
                    }
                    _ => {}
                }
                Store::Sqlite(path)
            }
            (None, Some(url)) => Store::Postgres(url.0),
            (sqlite, postgres) => {
                // A value cut for an error of its own leaves [store] short of
                // it: that is not a second error.
                if !self.damage.cut(&span, "sqlite") && !self.damage.cut(&span, "postgres") {
                    let message = if sqlite.is_some() && postgres.is_some() {
                        "[store] takes one of `sqlite` and `postgres`, not both"
                    } else {
                        "[store] needs `sqlite = \"FILE\"` or `postgres = \"URL\"`"
                    };
                    self.error(span, message);
                }
                Store::Sqlite(self.dir.join(DEFAULT_DB))
            }
        };
        (chosen, lease)
    }

    fn webhooks(&mut self, webhooks: Vec<toml::Spanned<RawWebhook>>) -> Vec<Endpoint> {
        let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
        let mut endpoints = Vec::new();
        for hook in webhooks {
            let span = hook.span();
            let hook = hook.into_inner();
            let url = match hook.url {
                Some(url) => {
                    let (url_span, url) = (url.span(), url.into_inner().0);
                    if seen.contains_key(&url) {
                        self.error(
                            url_span,
                            format!("webhook endpoint {url} is configured twice"),
                        );
                    } else {
                        seen.insert(url.clone(), url_span);
                    }
                    Some(url)
                }
                None => {
                    self.missing(&span, "url");
                    None
                }
            };
            if hook.secret.is_none() {
                self.missing(&span, "secret");
            }
            let (Some(url), Some(secret)) = (url, hook.secret) else {
                continue;
            };
            let mut endpoint = Endpoint::new(url, secret.0)
                .retry_schedule(hook.retry_schedule.map_or_else(
                    || DEFAULT_RETRY_SCHEDULE.to_vec(),
                    |s| s.into_iter().map(|d| d.0).collect(),
                ))
                .timeout(hook.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0));
            endpoint.events = hook
                .events
                .map(|events| events.into_iter().map(|e| e.0).collect());
            endpoints.push(endpoint);
        }
        endpoints
    }

    fn pipeline(
        &mut self,
        name: toml::Spanned<String>,
        pipeline: toml::Spanned<RawPipeline>,
    ) -> PipelineConfig {
        let (name_span, name) = (name.span(), name.into_inner());
        if let Err(e) = jobqueue::core::job::check_name("a pipeline name", &name) {
            self.error(name_span, e);
        }
        let span = pipeline.span();
        let p = pipeline.into_inner();
        let defaults = RetryPolicy::default();
        let retry = RetryPolicy {
            max_attempts: p.max_attempts.map_or(defaults.max_attempts, |n| n.0),
            initial: p
                .backoff_initial
                .as_ref()
                .map_or(defaults.initial, |d| d.get_ref().0),
            max: p
                .backoff_max
                .as_ref()
                .map_or(defaults.max, |d| d.get_ref().0),
            ..defaults
        };
        // Compared with the default only if the value was not there and
        // cut out for an error of its own.
        let backoff_cut =
            self.damage.cut(&span, "backoff_initial") || self.damage.cut(&span, "backoff_max");
        if !backoff_cut && retry.initial > retry.max {
            let at = p
                .backoff_initial
                .as_ref()
                .or(p.backoff_max.as_ref())
                .map_or(span.clone(), toml::Spanned::span);
            self.error(
                at,
                format!(
                    "backoff_initial ({}) must not be longer than backoff_max ({}){}",
                    humantime::format_duration(retry.initial),
                    humantime::format_duration(retry.max),
                    if p.backoff_max.is_none() {
                        ", its default"
                    } else {
                        ""
                    },
                ),
            );
        }
        let no_phases =
            format!("pipeline {name:?} has no phases: add a [[pipelines.{name}.phases]] table");
        let raw_phases = match p.phases {
            Some(phases) => {
                let phases_span = phases.span();
                let phases = phases.into_inner();
                if phases.is_empty() && !self.damage.touches(&phases_span) {
                    self.error(phases_span, no_phases);
                }
                phases
            }
            None => {
                if !self.damage.cut(&span, "phases") {
                    self.error(span.clone(), no_phases);
                }
                Vec::new()
            }
        };
        let mut names: Vec<String> = Vec::new();
        let mut phases = Vec::new();
        for phase in raw_phases {
            let phase_span = phase.span();
            let phase = phase.into_inner();
            let phase_name = phase.name.map(|n| {
                let (n_span, n) = (n.span(), n.into_inner().0);
                if names.contains(&n) {
                    self.error(
                        n_span,
                        format!("pipeline {name:?} has two phases named {n:?}"),
                    );
                }
                names.push(n.clone());
                n
            });
            if phase_name.is_none() {
                self.missing(&phase_span, "name");
            }
            if phase.command.is_none() {
                self.missing(&phase_span, "command");
            }
            let mut env = Vec::new();
            for (key, value) in phase.env {
                let (key_span, key) = (key.span(), key.into_inner());
                if let Some(problem) = env_problem(&key, &value) {
                    self.error(key_span, problem);
                }
                env.push((key, value));
            }
            let workdir = match phase.workdir {
                Some(w) => {
                    let (w_span, w) = (w.span(), self.dir.join(w.into_inner()));
                    if !w.is_dir() {
                        self.error(
                            w_span,
                            format!("workdir {} is not a directory", w.display()),
                        );
                    }
                    w
                }
                None => self.dir.to_path_buf(),
            };
            // A phase without its name or command was reported above.
            let (Some(phase_name), Some(command)) = (phase_name, phase.command) else {
                continue;
            };
            phases.push(PhaseConfig {
                name: phase_name,
                command: command.0,
                timeout: phase.timeout.map(|t| t.0),
                env,
                workdir,
            });
        }
        PipelineConfig {
            name,
            retry,
            timeout: p.timeout.map(|t| t.0),
            concurrency: p.concurrency.map(|c| c.0),
            phases,
        }
    }
}

/// What is wrong with an `env` entry, if anything.
fn env_problem(key: &str, value: &str) -> Option<String> {
    if RESERVED_ENV.contains(&key) {
        return Some(format!(
            "{key} is set by the server for every phase; `env` cannot set it"
        ));
    }
    if key.is_empty() || key.contains(['=', '\0']) {
        return Some(format!(
            "{key:?} is not an environment variable name (empty, or has '=' or NUL)"
        ));
    }
    if value.contains('\0') {
        return Some(format!("the value of {key} contains a NUL byte"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns() {
        let idx = LineIndex::new("ab\nçd\n\nx");
        assert_eq!(idx.place(0), (1, 1));
        assert_eq!(idx.place(1), (1, 2));
        assert_eq!(idx.place(3), (2, 1));
        // Columns count characters, not bytes: 'ç' is two bytes.
        assert_eq!(idx.place(5), (2, 2));
        assert_eq!(idx.place(7), (3, 1));
        assert_eq!(idx.place(8), (4, 1));
        assert_eq!(idx.place(100), (4, 2));
    }
}
