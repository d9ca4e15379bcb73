//! The config file as written: one serde struct per TOML table, each
//! refusing unknown keys, with the places (`Spanned`) that the checks across
//! several values need to point at.
//!
//! Required keys are `Option`s here and their absence is reported by the
//! checker: a key cut out for an error of its own (see `recover.rs`) is then
//! not also "missing", and the other keys of its table are still read.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::values::{
    Argv, AtLeastOne, Dur, EventName, HttpUrl, Listen, Name, PositiveDur, PostgresUrl, RetryDelay,
    Secret, Size, Token, WebhookTimeout,
};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) listen: Option<Listen>,
    pub(crate) token: Option<Token>,
    pub(crate) concurrency: Option<AtLeastOne<usize>>,
    pub(crate) shutdown_timeout: Option<Dur>,
    pub(crate) max_body: Option<Size>,
    pub(crate) webhook_secret: Option<Secret>,
    pub(crate) allow_private_webhook_urls: Option<bool>,
    pub(crate) store: Option<Spanned<RawStore>>,
    pub(crate) retention: Option<RawRetention>,
    #[serde(default)]
    pub(crate) webhooks: Vec<Spanned<RawWebhook>>,
    #[serde(default)]
    pub(crate) pipelines: BTreeMap<Spanned<String>, Spanned<RawPipeline>>,
    /// An addition to the documented keys: periodic jobs.
    #[serde(default)]
    pub(crate) schedules: Vec<Spanned<RawSchedule>>,
}

/// `[store]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) sqlite: Option<Spanned<PathBuf>>,
    pub(crate) postgres: Option<PostgresUrl>,
    pub(crate) lease: Option<Spanned<PositiveDur>>,
}

/// `[retention]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetention {
    /// An addition to the documented keys: `false` keeps every job for ever.
    pub(crate) enabled: Option<bool>,
    pub(crate) stale_after: Option<Dur>,
    pub(crate) delete_after: Option<Dur>,
    pub(crate) interval: Option<PositiveDur>,
}

/// One `[[webhooks]]` endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub(crate) url: Option<Spanned<HttpUrl>>,
    pub(crate) secret: Option<Secret>,
    pub(crate) events: Option<Vec<EventName>>,
    pub(crate) retry_schedule: Option<Vec<RetryDelay>>,
    pub(crate) timeout: Option<WebhookTimeout>,
}

/// One `[pipelines.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPipeline {
    pub(crate) max_attempts: Option<AtLeastOne<u32>>,
    pub(crate) backoff_initial: Option<Spanned<Dur>>,
    pub(crate) backoff_max: Option<Spanned<Dur>>,
    pub(crate) timeout: Option<PositiveDur>,
    pub(crate) concurrency: Option<AtLeastOne<usize>>,
    pub(crate) phases: Option<Spanned<Vec<Spanned<RawPhase>>>>,
}

/// One `[[pipelines.NAME.phases]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPhase {
    pub(crate) name: Option<Spanned<Name>>,
    pub(crate) command: Option<Argv>,
    pub(crate) timeout: Option<PositiveDur>,
    #[serde(default)]
    pub(crate) env: BTreeMap<Spanned<String>, String>,
    pub(crate) workdir: Option<Spanned<PathBuf>>,
}

/// One `[[schedules]]` entry: a job of `pipeline` at each tick of `cron`
/// or of `every`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSchedule {
    pub(crate) name: Option<Spanned<Name>>,
    pub(crate) pipeline: Option<Spanned<String>>,
    pub(crate) cron: Option<Spanned<String>>,
    pub(crate) every: Option<Spanned<PositiveDur>>,
    pub(crate) input: Option<toml::Value>,
    pub(crate) priority: Option<i32>,
}
