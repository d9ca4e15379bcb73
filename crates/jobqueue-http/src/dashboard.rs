//! The dashboard: a page and its assets, plain HTML, CSS and JavaScript
//! written by hand and embedded in the binary with `include_str!` (no build
//! step, nothing read from disk at run time).
//!
//! `GET /` needs the token like every route but `GET /health` (a browser
//! opens `/?token=<token>`); the page's static files under
//! `GET /assets/{name}` do not: they are the same bytes for everyone and
//! hold no data, and a browser cannot send a header when it loads them.
//!
//! Architecture Invariant: the shell holds no data. Every job, count and
//! event the page shows comes from the API's protected routes, each request
//! carrying the token (the `Authorization` header, or `?token=` for
//! `EventSource`). The page builds
//! its DOM with `textContent` only, never from HTML text, and a strict
//! Content-Security-Policy (no inline script, no inline style attribute in
//! markup, no other origin) backs that up.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::api::{ApiBody, clip, full};
use crate::error::ApiError;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// A hash of `body`, computed at compile time, for `ETag`.
    hash: u64,
}

impl Asset {
    const fn new(name: &'static str, content_type: &'static str, body: &'static str) -> Self {
        Self {
            name,
            content_type,
            body,
            hash: fnv1a(body.as_bytes()),
        }
    }
}

/// The page at `/`.
const INDEX: Asset = Asset::new(
    "index.html",
    "text/html; charset=utf-8",
    include_str!("dashboard/index.html"),
);

/// The files under `/assets/`.
const ASSETS: [Asset; 3] = [
    Asset::new(
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    ),
    Asset::new(
        "app.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/app.css"),
    ),
    Asset::new(
        "favicon.svg",
        "image/svg+xml",
        include_str!("dashboard/favicon.svg"),
    ),
];

/// What the page may load and run: its own scripts, styles, images and API
/// calls, nothing inline, nothing from elsewhere, and it is not framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// FNV-1a, 64 bits: enough to tell two versions of a file apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `GET /`: the dashboard's page.
pub(crate) fn index(request: &HeaderMap) -> Response<ApiBody> {
    respond(&INDEX, request)
}

/// `GET /assets/{name}`: a script, style sheet or icon of the page.
pub(crate) fn asset(name: &str, request: &HeaderMap) -> Result<Response<ApiBody>, ApiError> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(|a| respond(a, request))
        .ok_or_else(|| ApiError::not_found(format!("no asset {:?}", clip(name))))
}

/// The file with its headers; `304 Not Modified` when the client's copy
/// (`If-None-Match`) is this version. Browsers revalidate on every load
/// (`no-cache`), so a new binary's page is never mixed with old scripts.
fn respond(asset: &Asset, request: &HeaderMap) -> Response<ApiBody> {
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut response = if fresh {
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(full(asset.body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_never_parses_data_as_html() {
        // Job input, results and errors are untrusted: the page must build
        // its DOM from text, never from HTML strings.
        let script = ASSETS[0].body;
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "createContextualFragment",
            "DOMParser",
        ] {
            assert!(!script.contains(sink), "app.js uses {sink}");
        }
    }

    #[test]
    fn the_script_listens_to_every_event_type() {
        // Server-Sent Events arrive by name: a type the list lacks is never
        // seen by the page.
        let script = ASSETS[0].body;
        let list = script
            .split("const EVENT_TYPES = [")
            .nth(1)
            .and_then(|rest| rest.split("];").next())
            .unwrap_or_default();
        for ty in jobqueue::core::EventType::ALL {
            assert!(
                list.contains(&format!("\"{ty}\"")),
                "EVENT_TYPES lacks {ty}"
            );
        }
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        let page = INDEX.body;
        assert!(!page.contains("<style"), "inline styles break the CSP");
        assert!(!page.contains(" style="), "inline styles break the CSP");
        for (i, part) in page.split("<script").enumerate().skip(1) {
            assert!(part.starts_with(" src=\"assets/"), "script {i} is inline");
        }
        for asset in &ASSETS {
            assert!(
                page.contains(&format!("assets/{}", asset.name)),
                "{} is not used",
                asset.name
            );
        }
        // Relative links, so the dashboard also works mounted under a
        // prefix (`/queue/`).
        assert!(!page.contains("=\"/"), "an absolute link in index.html");
    }

    #[test]
    fn hashes_tell_versions_apart() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
