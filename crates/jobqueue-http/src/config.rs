//! [`ApiConfig`]: what a server operator sets.

/// The largest request body [`ApiConfig::default`] accepts: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// How the API checks requests.
///
/// Both fields are public and the struct has exactly these two, so it can be
/// written as a literal; use `..ApiConfig::default()` to stay compatible with
/// fields added later.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// When set, every route but `GET /health` and the dashboard's static
    /// shell (`GET /` and `GET /assets/...`, which hold no data) needs this
    /// token, as `Authorization: Bearer <token>` or as `?token=<token>` (for
    /// clients such as `EventSource` that cannot set headers). An empty
    /// token matches no request: set `None` for an open API.
    pub token: Option<String>,
    /// The largest request body in bytes; a larger one is refused with
    /// 413 `payload_too_large` before it is parsed. Default 1 MiB.
    pub max_body: usize,
}

impl Default for ApiConfig {
    /// No token, bodies up to 1 MiB.
    fn default() -> Self {
        Self {
            token: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_body", &self.max_body)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let config = ApiConfig {
            token: Some("s3cret".into()),
            ..ApiConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("1048576"), "{text}");
    }
}
