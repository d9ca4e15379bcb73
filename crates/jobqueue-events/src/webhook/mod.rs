//! Webhooks (Standard Webhooks; see `docs/events.md`): configuration, signing,
//! URL checks and the [`Dispatcher`].
//!
//! The store routes each event to deliveries in the same atomic step that
//! appends it (the outbox, [`jobqueue_core::outbox`]): one row per event and
//! endpoint, with a snapshot of the event. The dispatcher only sends what is
//! due and records each attempt's outcome, so deliveries survive restarts,
//! outlive their job, and never hold up the queue.
//!
//! # Wiring
//! ```no_run
//! # use std::sync::Arc;
//! # use jobqueue_core::{JobStore, MemoryStore};
//! # use jobqueue_events::{Dispatcher, Endpoint, EventBus, WebhookConfig};
//! # async fn wire() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
//! let bus = EventBus::default();
//! let config = WebhookConfig {
//!     endpoints: vec![Endpoint::new("https://example.com/hooks", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")],
//!     ..WebhookConfig::default()
//! };
//! let dispatcher = Dispatcher::new(store.clone(), &config)?.wake_on(bus.latest());
//! store.set_webhook_routes(config.routes());
//! store.set_event_sink(Arc::new(bus.clone()));
//! let handle = dispatcher.spawn();
//! // ... run the queue ...
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Pitfalls
//! - Set the routes on the store before events are written: deliveries are
//!   decided when an event is appended, never later.
//! - Run one dispatcher per store. Two would both send what is due.

mod dispatch;
pub mod sign;
mod special;
mod url;

use std::fmt;
use std::time::Duration;

use jobqueue_core::{EventType, WebhookRoute};

pub use dispatch::{DEFAULT_MAX_IDLE, Dispatcher, DispatcherHandle};
pub use sign::{InvalidSecret, SigningKey};
pub use url::{check_webhook_url, check_webhook_url_resolved, is_forbidden_ip};

/// The delays between attempts when an endpoint gives none: 5 s, 5 min,
/// 30 min, 2 h, 5 h, 10 h (so 7 attempts over about 18 hours).
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 6] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How long an attempt may take when an endpoint gives no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// How many deliveries are in flight at once by default.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// The most deliveries a configuration may have in flight at once. The
/// dispatcher reads the outbox this many rows at a time, so the bound keeps
/// every read of the outbox small.
pub const MAX_CONCURRENCY: usize = 1024;

/// The longest delay a retry schedule may have: ten years (of 365 days).
/// A delay that long parks a delivery (tests do, to keep one pending); a
/// longer one is a mistake of units, and the bound keeps every next-attempt
/// time far inside what a store can hold (years 0 to 9999).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The longest timeout an attempt may have: an attempt holds one of the
/// concurrency slots, and shutdown waits for the attempts in flight.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A `Retry-After` longer than this is cut to it, so a receiver cannot park
/// a delivery for ever.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A configured endpoint (`[[webhooks]]`). Trusted as the operator wrote it:
/// it may be a private or loopback address.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to POST.
    pub url: String,
    /// The signing secret, `whsec_` followed by a base64 key.
    pub secret: String,
    /// The event types it gets; `None` means every type but
    /// `job.phase.progress`.
    pub events: Option<Vec<EventType>>,
    /// The delays between attempts; after the last one the delivery fails.
    /// Each at most [`MAX_RETRY_DELAY`].
    pub retry_schedule: Vec<Duration>,
    /// How long one attempt may take to get an answer: more than zero and
    /// at most [`MAX_TIMEOUT`].
    pub timeout: Duration,
}

impl Endpoint {
    /// An endpoint with the default filter, retry schedule and timeout.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            events: None,
            retry_schedule: DEFAULT_RETRY_SCHEDULE.to_vec(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Only these event types.
    pub fn events(mut self, events: impl IntoIterator<Item = EventType>) -> Self {
        self.events = Some(events.into_iter().collect());
        self
    }

    /// Sets the delays between attempts.
    pub fn retry_schedule(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.retry_schedule = delays.into_iter().collect();
        self
    }

    /// Sets the timeout of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("retry_schedule", &self.retry_schedule)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Everything the webhook side needs: configured endpoints, and how per-job
/// `webhook_url`s are signed and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The `[[webhooks]]` endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Signs deliveries to a job's own `webhook_url` (`webhook_secret`).
    /// Without it such deliveries fail with a clear error.
    pub default_secret: Option<String>,
    /// Lets a job's `webhook_url` reach loopback, private, link-local and
    /// unspecified addresses (`allow_private_webhook_urls`).
    pub allow_private: bool,
    /// The delays between attempts of per-job deliveries, each at most
    /// [`MAX_RETRY_DELAY`].
    pub job_retry_schedule: Vec<Duration>,
    /// The timeout of one attempt of a per-job delivery: more than zero and
    /// at most [`MAX_TIMEOUT`].
    pub job_timeout: Duration,
    /// Deliveries in flight at once: 1 to [`MAX_CONCURRENCY`].
    pub concurrency: usize,
}

impl Default for WebhookConfig {
    /// No endpoint, no default secret, private targets refused, default
    /// schedule, timeout and concurrency.
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            default_secret: None,
            allow_private: false,
            job_retry_schedule: DEFAULT_RETRY_SCHEDULE.to_vec(),
            job_timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("endpoints", &self.endpoints)
            .field(
                "default_secret",
                &self.default_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_private", &self.allow_private)
            .field("job_retry_schedule", &self.job_retry_schedule)
            .field("job_timeout", &self.job_timeout)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl WebhookConfig {
    /// The routes to give the store
    /// ([`JobStore::set_webhook_routes`](jobqueue_core::JobStore::set_webhook_routes)).
    pub fn routes(&self) -> Vec<WebhookRoute> {
        self.endpoints
            .iter()
            .map(|e| WebhookRoute {
                url: e.url.clone(),
                events: e.events.clone(),
            })
            .collect()
    }

    /// Checks every URL and secret, that no URL is configured twice (a
    /// delivery finds its endpoint by URL), and that every timeout, retry
    /// delay and the concurrency are within their bounds.
    pub fn validate(&self) -> Result<(), WebhookError> {
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(WebhookError::InvalidSetting {
                setting: "webhook concurrency".to_owned(),
                reason: format!("must be 1 to {MAX_CONCURRENCY}, not {}", self.concurrency),
            });
        }
        check_timeout(|| "webhook job_timeout".to_owned(), self.job_timeout)?;
        check_schedule(
            || "webhook job_retry_schedule".to_owned(),
            &self.job_retry_schedule,
        )?;
        for (i, e) in self.endpoints.iter().enumerate() {
            check_webhook_url(&e.url, true).map_err(|reason| WebhookError::InvalidUrl {
                url: e.url.clone(),
                reason,
            })?;
            SigningKey::from_secret(&e.secret).map_err(|_| WebhookError::InvalidSecret {
                whose: format!("webhook endpoint {}", e.url),
            })?;
            if self.endpoints[..i].iter().any(|o| o.url == e.url) {
                return Err(WebhookError::DuplicateEndpoint { url: e.url.clone() });
            }
            check_timeout(
                || format!("timeout of webhook endpoint {}", e.url),
                e.timeout,
            )?;
            check_schedule(
                || format!("retry_schedule of webhook endpoint {}", e.url),
                &e.retry_schedule,
            )?;
        }
        if let Some(secret) = &self.default_secret {
            SigningKey::from_secret(secret).map_err(|_| WebhookError::InvalidSecret {
                whose: "webhook_secret".to_owned(),
            })?;
        }
        Ok(())
    }
}

/// Checks that `timeout`, the setting `setting` names, is more than zero and
/// at most [`MAX_TIMEOUT`].
fn check_timeout(setting: impl FnOnce() -> String, timeout: Duration) -> Result<(), WebhookError> {
    let reason = if timeout.is_zero() {
        "must be more than zero".to_owned()
    } else if timeout > MAX_TIMEOUT {
        format!("is {timeout:?}, more than the limit of {MAX_TIMEOUT:?}")
    } else {
        return Ok(());
    };
    Err(WebhookError::InvalidSetting {
        setting: setting(),
        reason,
    })
}

/// Checks that no delay of `schedule`, the setting `setting` names, is
/// longer than [`MAX_RETRY_DELAY`].
fn check_schedule(
    setting: impl FnOnce() -> String,
    schedule: &[Duration],
) -> Result<(), WebhookError> {
    match schedule.iter().position(|d| *d > MAX_RETRY_DELAY) {
        None => Ok(()),
        Some(i) => Err(WebhookError::InvalidSetting {
            setting: setting(),
            reason: format!(
                "has a delay of {:?} (number {}), more than the limit of {MAX_RETRY_DELAY:?}",
                schedule[i],
                i + 1
            ),
        }),
    }
}

/// A webhook configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A secret is not `whsec_` followed by base64.
    #[error("the secret of {whose} must be \"whsec_\" followed by a base64 key")]
    InvalidSecret {
        /// Which secret.
        whose: String,
    },
    /// An endpoint URL is not an http(s) URL.
    #[error("{reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS client could not be set up.
    #[error("cannot set up the TLS client for https webhooks: {0}")]
    Tls(String),
    /// Two endpoints have the same URL.
    #[error("webhook endpoint {url} is configured twice")]
    DuplicateEndpoint {
        /// The URL.
        url: String,
    },
    /// A timeout, delay, count or interval is out of its bounds.
    #[error("{setting} {reason}")]
    InvalidSetting {
        /// Which setting, e.g. `webhook job_timeout`.
        setting: String,
        /// What is wrong with its value.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn validates_urls_secrets_and_duplicates() {
        let ok = WebhookConfig {
            endpoints: vec![Endpoint::new("http://127.0.0.1:1/h", SECRET)],
            default_secret: Some(SECRET.into()),
            ..WebhookConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));

        let mut bad = ok.clone();
        bad.endpoints[0].secret = "whsec_!!".into();
        assert!(matches!(
            bad.validate(),
            Err(WebhookError::InvalidSecret { .. })
        ));

        let mut bad = ok.clone();
        bad.endpoints[0].url = "ftp://x/".into();
        assert!(matches!(
            bad.validate(),
            Err(WebhookError::InvalidUrl { .. })
        ));

        let mut bad = ok.clone();
        bad.endpoints.push(bad.endpoints[0].clone());
        assert!(matches!(
            bad.validate(),
            Err(WebhookError::DuplicateEndpoint { .. })
        ));

        let mut bad = ok;
        bad.default_secret = Some("nope nope".into());
        let err = bad.validate().unwrap_err();
        assert!(err.to_string().contains("webhook_secret"), "{err}");
    }

    #[test]
    fn settings_out_of_bounds_are_refused() {
        let day = Duration::from_secs(24 * 3600);
        let endpoint = || Endpoint::new("http://a/", SECRET);
        let cases: Vec<(WebhookConfig, &str)> = vec![
            (
                WebhookConfig {
                    concurrency: 0,
                    ..WebhookConfig::default()
                },
                "webhook concurrency",
            ),
            (
                WebhookConfig {
                    concurrency: MAX_CONCURRENCY + 1,
                    ..WebhookConfig::default()
                },
                "webhook concurrency",
            ),
            (
                WebhookConfig {
                    job_timeout: Duration::ZERO,
                    ..WebhookConfig::default()
                },
                "webhook job_timeout",
            ),
            (
                WebhookConfig {
                    job_timeout: Duration::MAX,
                    ..WebhookConfig::default()
                },
                "webhook job_timeout",
            ),
            (
                WebhookConfig {
                    job_retry_schedule: vec![day, MAX_RETRY_DELAY + Duration::from_nanos(1)],
                    ..WebhookConfig::default()
                },
                "webhook job_retry_schedule",
            ),
            (
                WebhookConfig {
                    endpoints: vec![endpoint().timeout(Duration::ZERO)],
                    ..WebhookConfig::default()
                },
                "timeout of webhook endpoint http://a/",
            ),
            (
                WebhookConfig {
                    endpoints: vec![endpoint().retry_schedule([Duration::MAX])],
                    ..WebhookConfig::default()
                },
                "retry_schedule of webhook endpoint http://a/",
            ),
        ];
        for (config, setting) in cases {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(&err, WebhookError::InvalidSetting { setting: s, .. } if s == setting),
                "{err:?}"
            );
            assert!(err.to_string().starts_with(setting), "{err}");
        }

        let at_the_limits = WebhookConfig {
            endpoints: vec![
                endpoint()
                    .retry_schedule([Duration::ZERO, MAX_RETRY_DELAY])
                    .timeout(MAX_TIMEOUT),
            ],
            job_retry_schedule: vec![MAX_RETRY_DELAY],
            job_timeout: Duration::from_nanos(1),
            concurrency: MAX_CONCURRENCY,
            ..WebhookConfig::default()
        };
        assert_eq!(at_the_limits.validate(), Ok(()));
    }

    #[test]
    fn routes_carry_url_and_filter() {
        let config = WebhookConfig {
            endpoints: vec![
                Endpoint::new("http://a/", SECRET).events([EventType::JobCompleted]),
                Endpoint::new("http://b/", SECRET),
            ],
            ..WebhookConfig::default()
        };
        let routes = config.routes();
        assert_eq!(routes.len(), 2);
        assert!(routes[0].wants(EventType::JobCompleted));
        assert!(!routes[0].wants(EventType::JobFailed));
        assert!(routes[1].wants(EventType::JobFailed));
        assert!(!routes[1].wants(EventType::PhaseProgress));
    }

    #[test]
    fn debug_hides_secrets() {
        let config = WebhookConfig {
            endpoints: vec![Endpoint::new("http://a/", SECRET)],
            default_secret: Some(SECRET.into()),
            ..WebhookConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("MfKQ9r8"), "{text}");
    }
}
