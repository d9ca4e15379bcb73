//! What a command writes: stdout read up to a limit, stderr split into
//! bounded lines, progress lines recognised, and the tail of the rest kept
//! for the error text.
//!
//! Nothing here buffers without bound: stdout stops at its limit, a stderr
//! line longer than [`MAX_LINE`] is cut into pieces, and the tail holds the
//! last [`TAIL`] bytes.

use jobqueue::PhaseContext;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The stderr bytes kept for the error text of a failed phase.
pub const TAIL: usize = 4 * 1024;

/// The longest stderr line handled as one; longer ones are cut into pieces
/// of this size (a progress line is never that long).
pub const MAX_LINE: usize = 8 * 1024;

/// The prefix of a progress line on stderr.
pub const PROGRESS_PREFIX: &str = "::progress::";

/// Stdout went past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge;

/// Reads `reader` to its end into `buf`; [`TooLarge`] as soon as it holds
/// more than `limit` bytes (what was read stays in `buf`, at most `limit`
/// plus one read). A read error ends the output like an end of file.
pub(crate) async fn read_limited(
    mut reader: impl AsyncRead + Unpin,
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<(), TooLarge> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the command's stdout failed");
                return Ok(());
            }
        };
        if buf.len().saturating_add(n) > limit {
            return Err(TooLarge);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads `reader` to its end and hands each line (without its newline, and
/// without a trailing `\r`) to `on_line`; a line longer than [`MAX_LINE`]
/// is handed over in pieces.
pub(crate) async fn read_lines(mut reader: impl AsyncRead + Unpin, mut on_line: impl FnMut(&[u8])) {
    let mut chunk = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the command's stderr failed");
                break;
            }
        };
        for piece in chunk[..n].split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            let mut body = body;
            while line.len() + body.len() > MAX_LINE {
                let room = MAX_LINE - line.len();
                line.extend_from_slice(&body[..room]);
                emit(&mut line, &mut on_line);
                body = &body[room..];
            }
            line.extend_from_slice(body);
            if ends {
                emit(&mut line, &mut on_line);
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line, &mut on_line);
    }
}

fn emit(line: &mut Vec<u8>, on_line: &mut impl FnMut(&[u8])) {
    let text = line.strip_suffix(b"\r").unwrap_or(line);
    on_line(text);
    line.clear();
}

/// A progress report: `::progress::<percent> <message>`, percent from 0 to
/// 100 (a decimal is rounded), the message optional.
pub(crate) fn parse_progress(line: &str) -> Option<(u8, Option<&str>)> {
    let rest = line.strip_prefix(PROGRESS_PREFIX)?;
    let (number, message) = match rest.split_once(char::is_whitespace) {
        Some((n, m)) => (n, Some(m.trim()).filter(|m| !m.is_empty())),
        None => (rest, None),
    };
    let percent: f64 = number.trim().parse().ok()?;
    if !(0.0..=100.0).contains(&percent) {
        return None;
    }
    // In range, so the cast neither wraps nor saturates.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "0..=100 after the range check above"
    )]
    let percent = percent.round() as u8;
    Some((percent, message))
}

/// The last [`TAIL`] bytes of the stderr lines that were not progress.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    text: String,
}

impl Tail {
    pub(crate) fn push(&mut self, line: &str) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(line);
        // Trimmed in steps rather than on every line, so a flood of short
        // lines costs no copy per line; never more than twice the tail.
        if self.text.len() > 2 * TAIL {
            let cut = floor_char_boundary(&self.text, self.text.len() - TAIL);
            self.text.drain(..cut);
        }
    }

    /// The kept text: at most [`TAIL`] bytes, whole characters, trimmed.
    pub(crate) fn text(&self) -> &str {
        let start = self.text.len().saturating_sub(TAIL);
        let start = ceil_char_boundary(&self.text, start);
        self.text[start..].trim()
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Handles one stderr line: progress goes to the phase's reporter, other
/// lines to the log and the tail.
pub(crate) fn stderr_line(ctx: &PhaseContext, tail: &mut Tail, line: &[u8]) {
    let line = String::from_utf8_lossy(line);
    if let Some((percent, message)) = parse_progress(&line) {
        ctx.report(percent, message);
        return;
    }
    tracing::info!(target: "jobqueue::command", stderr = %line);
    tail.push(&line);
}

/// The phase's result from its stdout: trimmed; JSON as is, other text as
/// a JSON string, nothing as `null`. Bytes that are not UTF-8 are replaced.
pub(crate) fn result_of(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let text = text.trim();
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_progress("::progress::40 fetching"),
            Some((40, Some("fetching")))
        );
        assert_eq!(parse_progress("::progress::100"), Some((100, None)));
        assert_eq!(parse_progress("::progress::0   "), Some((0, None)));
        assert_eq!(
            parse_progress("::progress::12.6 a  b "),
            Some((13, Some("a  b")))
        );
        assert_eq!(parse_progress("::progress::101 x"), None);
        assert_eq!(parse_progress("::progress::-1"), None);
        assert_eq!(parse_progress("::progress::x"), None);
        assert_eq!(parse_progress("progress 50"), None);
    }

    #[test]
    fn results() {
        assert_eq!(result_of(b""), Value::Null);
        assert_eq!(result_of(b"  \n"), Value::Null);
        assert_eq!(result_of(b"{\"a\": 1}\n"), serde_json::json!({"a": 1}));
        assert_eq!(result_of(b"42"), serde_json::json!(42));
        assert_eq!(result_of(b"\"s\""), serde_json::json!("s"));
        assert_eq!(
            result_of(b"hello world\n"),
            serde_json::json!("hello world")
        );
        assert_eq!(result_of(b"{broken"), serde_json::json!("{broken"));
    }

    #[test]
    fn the_tail_keeps_the_last_bytes_in_whole_characters() {
        let mut tail = Tail::default();
        for i in 0..10_000 {
            tail.push(&format!("line {i} é"));
        }
        let text = tail.text();
        assert!(text.len() <= TAIL);
        assert!(text.ends_with("line 9999 é"));
        assert!(tail.text.len() <= 2 * TAIL + 20);
    }

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let mut input = b"one\r\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE * 2 + 5));
        input.extend(b"\nlast");
        let mut lines = Vec::new();
        read_lines(&input[..], |l| lines.push(l.to_vec())).await;
        let lens: Vec<usize> = lines.iter().map(Vec::len).collect();
        assert_eq!(lens, [3, 3, MAX_LINE, MAX_LINE, 5, 4]);
        assert_eq!(lines[0], b"one");
        assert_eq!(lines[5], b"last");
    }

    #[tokio::test]
    async fn stdout_stops_at_its_limit() {
        let mut buf = Vec::new();
        assert_eq!(read_limited(&[1u8; 100][..], 100, &mut buf).await, Ok(()));
        assert_eq!(buf.len(), 100);
        let mut buf = Vec::new();
        assert_eq!(
            read_limited(&[1u8; 101][..], 100, &mut buf).await,
            Err(TooLarge)
        );
    }
}
