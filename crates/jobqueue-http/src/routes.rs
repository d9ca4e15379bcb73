//! The route table: every method and path the API answers, in one list that
//! the dispatcher, the metrics labels and the OpenAPI test all read.

use http::Method;

/// One operation of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Index,
    Asset,
    Stats,
    Health,
    Metrics,
    OpenApi,
    Enqueue,
    EnqueueBatch,
    ListJobs,
    GetJob,
    CancelJob,
    RetryJob,
    DeleteJob,
    JobEvents,
    Events,
    Deliveries,
    ListPipelines,
    PausePipeline,
    ResumePipeline,
}

impl Endpoint {
    /// Every endpoint, in the order the docs list them.
    pub(crate) const ALL: [Endpoint; 19] = [
        Endpoint::Enqueue,
        Endpoint::EnqueueBatch,
        Endpoint::ListJobs,
        Endpoint::GetJob,
        Endpoint::CancelJob,
        Endpoint::RetryJob,
        Endpoint::DeleteJob,
        Endpoint::JobEvents,
        Endpoint::Events,
        Endpoint::Deliveries,
        Endpoint::ListPipelines,
        Endpoint::PausePipeline,
        Endpoint::ResumePipeline,
        Endpoint::Stats,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::OpenApi,
        Endpoint::Index,
        Endpoint::Asset,
    ];

    /// Its method.
    pub(crate) fn method(self) -> Method {
        match self.method_name() {
            "POST" => Method::POST,
            "DELETE" => Method::DELETE,
            _ => Method::GET,
        }
    }

    /// Its method's name.
    pub(crate) const fn method_name(self) -> &'static str {
        match self {
            Endpoint::Enqueue
            | Endpoint::EnqueueBatch
            | Endpoint::CancelJob
            | Endpoint::RetryJob
            | Endpoint::PausePipeline
            | Endpoint::ResumePipeline => "POST",
            Endpoint::DeleteJob => "DELETE",
            _ => "GET",
        }
    }

    /// Its path template; `{id}` (or `{name}`) stands for one path segment.
    pub(crate) const fn path(self) -> &'static str {
        match self {
            Endpoint::Index => "/",
            Endpoint::Asset => "/assets/{name}",
            Endpoint::Stats => "/stats",
            Endpoint::Health => "/health",
            Endpoint::Metrics => "/metrics",
            Endpoint::OpenApi => "/openapi.json",
            Endpoint::Enqueue | Endpoint::ListJobs => "/jobs",
            Endpoint::EnqueueBatch => "/jobs/batch",
            Endpoint::GetJob | Endpoint::DeleteJob => "/jobs/{id}",
            Endpoint::CancelJob => "/jobs/{id}/cancel",
            Endpoint::RetryJob => "/jobs/{id}/retry",
            Endpoint::JobEvents => "/jobs/{id}/events",
            Endpoint::Events => "/events",
            Endpoint::Deliveries => "/webhooks/deliveries",
            Endpoint::ListPipelines => "/pipelines",
            Endpoint::PausePipeline => "/pipelines/{name}/pause",
            Endpoint::ResumePipeline => "/pipelines/{name}/resume",
        }
    }

    /// Whether it answers without a token: the health check, and the
    /// dashboard's static shell (its page and assets hold no data; every
    /// request the page makes for data carries the token).
    pub(crate) fn is_public(self) -> bool {
        matches!(self, Endpoint::Health | Endpoint::Asset)
    }
}

/// What a method and path come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved<'p> {
    /// This endpoint, with the `{id}` (or `{name}`) segment when its path
    /// has one.
    Found(Endpoint, Option<&'p str>),
    /// The path exists with other methods (they are listed).
    MethodNotAllowed(Vec<&'static str>),
    /// No route has this path.
    NotFound,
}

impl Resolved<'_> {
    /// The path template for metrics labels: the route's, or `unmatched`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Resolved::Found(e, _) => e.path(),
            _ => "unmatched",
        }
    }
}

/// Finds the endpoint of `method` and `path`. `HEAD` is answered as `GET`
/// (the server sends the headers only).
pub(crate) fn resolve<'p>(method: &Method, path: &'p str) -> Resolved<'p> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let mut allowed: Vec<&'static str> = Vec::new();
    // Exact templates before ones with `{id}`, so `/jobs/batch` is not a job id.
    for exact in [true, false] {
        for endpoint in Endpoint::ALL {
            let template = endpoint.path();
            if template.contains('{') == exact {
                continue;
            }
            let Some(id) = matches(template, path) else {
                continue;
            };
            if endpoint.method() == method {
                return Resolved::Found(endpoint, id);
            }
            let m = endpoint.method_name();
            if !allowed.contains(&m) {
                allowed.push(m);
            }
        }
    }
    if allowed.is_empty() {
        Resolved::NotFound
    } else {
        if allowed.contains(&"GET") {
            allowed.push("HEAD");
        }
        Resolved::MethodNotAllowed(allowed)
    }
}

/// Whether `path` fits `template`: `Some(id)` with the `{id}` segment (or
/// `None` for a template without one).
fn matches<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut id = None;
    let mut parts = path.split('/');
    for want in template.split('/') {
        let got = parts.next()?;
        if want.starts_with('{') {
            if got.is_empty() {
                return None;
            }
            id = Some(got);
        } else if want != got {
            return None;
        }
    }
    parts.next().is_none().then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve() {
        assert_eq!(
            resolve(&Method::GET, "/jobs"),
            Resolved::Found(Endpoint::ListJobs, None)
        );
        assert_eq!(
            resolve(&Method::POST, "/jobs/batch"),
            Resolved::Found(Endpoint::EnqueueBatch, None)
        );
        assert_eq!(
            resolve(&Method::GET, "/jobs/batch"),
            Resolved::Found(Endpoint::GetJob, Some("batch"))
        );
        assert_eq!(
            resolve(&Method::POST, "/jobs/abc/cancel"),
            Resolved::Found(Endpoint::CancelJob, Some("abc"))
        );
        assert_eq!(
            resolve(&Method::HEAD, "/health"),
            Resolved::Found(Endpoint::Health, None)
        );
        assert_eq!(
            resolve(&Method::PUT, "/jobs"),
            Resolved::MethodNotAllowed(vec!["POST", "GET", "HEAD"])
        );
        assert_eq!(resolve(&Method::GET, "/jobs/"), Resolved::NotFound);
        assert_eq!(resolve(&Method::GET, "/jobs//cancel"), Resolved::NotFound);
        assert_eq!(resolve(&Method::GET, "/nope"), Resolved::NotFound);
        assert_eq!(resolve(&Method::GET, ""), Resolved::NotFound);
        assert_eq!(
            resolve(&Method::GET, "/"),
            Resolved::Found(Endpoint::Index, None)
        );
        assert_eq!(
            resolve(&Method::GET, "/assets/app.js"),
            Resolved::Found(Endpoint::Asset, Some("app.js"))
        );
        assert_eq!(resolve(&Method::GET, "/assets/"), Resolved::NotFound);
        assert_eq!(
            resolve(&Method::GET, "/stats"),
            Resolved::Found(Endpoint::Stats, None)
        );
    }

    #[test]
    fn one_endpoint_per_method_and_path() {
        for a in Endpoint::ALL {
            let others = Endpoint::ALL.iter().filter(|b| **b != a);
            for b in others {
                assert!(
                    (a.method(), a.path()) != (b.method(), b.path()),
                    "{a:?} and {b:?}"
                );
            }
        }
    }
}
