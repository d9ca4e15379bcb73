//! Query strings: percent-decoded pairs, comma lists, and the opaque
//! pagination cursor.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jobqueue::core::JobId;

use crate::error::ApiError;

/// The decoded pairs of a query string, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Reads `query` (the part after `?`). Bad percent escapes stay as they
    /// are and bad UTF-8 becomes U+FFFD, as browsers do; nothing fails here.
    pub(crate) fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Self { pairs }
    }

    /// The last value of `name`, if it appears.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every item of every `name=a,b` in the query, trimmed, empty items left
    /// out: `?status=a,b&status=c` is `[a, b, c]`.
    pub(crate) fn list(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Each item of [`list`](Self::list) parsed; the error names the
    /// parameter and the bad item.
    pub(crate) fn parsed_list<T>(&self, name: &str) -> Result<Vec<T>, ApiError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.list(name)
            .into_iter()
            .map(|item| {
                item.parse()
                    .map_err(|e| ApiError::invalid(format!("{name}: {e}")))
            })
            .collect()
    }

    /// `limit`: absent gives `default`; otherwise an integer from 1 to `max`.
    pub(crate) fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("limit").map(str::trim) {
            None | Some("") => Ok(default),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(format!(
                    "limit must be an integer from 1 to {max}, got {text:?}"
                ))),
            },
        }
    }
}

/// Prefix of the cursor text, so its form can change without old cursors
/// being misread.
const CURSOR_PREFIX: &str = "j1:";

/// The opaque `next_cursor` for a page that ends at `last`.
pub(crate) fn encode_cursor(last: JobId) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{last}"))
}

/// Reads a cursor made by [`encode_cursor`].
pub(crate) fn decode_cursor(cursor: &str) -> Result<JobId, ApiError> {
    let bad = || ApiError::invalid(format!("cursor {cursor:?} is not one this server made"));
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix(CURSOR_PREFIX)
        .and_then(|id| id.parse().ok())
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded_and_lists_split() {
        let q = Query::parse(Some(
            "status=queued,%20failed&status=&pipeline=a%2Bb&x&limit=5&limit=7",
        ));
        assert_eq!(q.list("status"), vec!["queued", "failed"]);
        assert_eq!(q.get("pipeline"), Some("a+b"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(q.limit(50, 100).unwrap(), 7);
        assert!(Query::parse(Some("limit=0")).limit(50, 100).is_err());
        assert!(Query::parse(Some("limit=101")).limit(50, 100).is_err());
        assert!(Query::parse(Some("limit=-1")).limit(50, 100).is_err());
        assert_eq!(Query::parse(None).limit(50, 100).unwrap(), 50);
        // Bad escapes and bad UTF-8 do not fail.
        let q = Query::parse(Some("a=%ZZ&b=%FF"));
        assert_eq!(q.get("a"), Some("%ZZ"));
        assert_eq!(q.get("b"), Some("\u{FFFD}"));
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let id = JobId::new();
        let c = encode_cursor(id);
        assert!(!c.contains(&id.to_string()), "opaque");
        assert_eq!(decode_cursor(&c).unwrap(), id);
        for bad in ["", "x", "!!!", &URL_SAFE_NO_PAD.encode("j1:nope")] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
