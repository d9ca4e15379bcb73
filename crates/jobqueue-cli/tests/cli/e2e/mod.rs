//! End to end: the real `jobqueue serve`, started as a process on a free
//! loopback port with a config whose phases are `sh -c` commands, and
//! talked to over real HTTP (and with the real client commands).
//!
//! Each test has its own directory (config, database, the files its
//! commands write), its own port and its own server, so they run in
//! parallel. Nothing waits by sleeping: a test waits for a line of the
//! server's output, an event of its SSE stream, a webhook request or a
//! process's exit, each with [`DEADLINE`].
//!
//! - `mod.rs` (this file): [`Setup`] (a config in a directory, checked with
//!   `jobqueue check-config` before every start), [`Server`] (a running
//!   `jobqueue serve`), a small HTTP client ([`Reply`]) and an SSE reader
//!   ([`Sse`]).
//! - `receiver.rs`: a loopback webhook receiver that checks signatures
//!   with the `standardwebhooks` crate.
//! - The tests, by area: `phases.rs` (results, retries, exit 100, a phase
//!   timeout, manual retry), `cancel.rs`, `events.rs` (SSE replay),
//!   `webhooks.rs` (and retention), `restart.rs` (SIGKILL and SIGTERM of
//!   the server), `errors.rs` (every error of the API, the token, listing),
//!   `client.rs` (the client commands against the real server, and `serve`
//!   without a config), `multi.rs` (three servers on one PostgreSQL
//!   database, one of them killed).

mod cancel;
mod client;
mod errors;
mod events;
mod multi;
mod phases;
mod receiver;
mod restart;
mod webhooks;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStderr};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support::{BIN, DEADLINE};

/// Event types that end a job (until a manual retry).
pub(crate) const FINAL: [&str; 3] = ["job.completed", "job.failed", "job.cancelled"];

/// A phase table of pipeline `pipeline` whose command is `sh -c script`.
/// (A Rust string's debug form is a TOML basic string for ASCII text.)
pub(crate) fn phase(pipeline: &str, name: &str, script: &str) -> String {
    format!(
        "\n[[pipelines.{pipeline}.phases]]\nname = \"{name}\"\ncommand = [\"sh\", \"-c\", {script:?}]\n"
    )
}

/// A shell line that appends `run <job> <phase>` to the file `log` (in the
/// config's directory, where commands run), so a test can count runs.
pub(crate) const LOG_RUN: &str = "echo \"run $JOBQUEUE_JOB_ID $JOBQUEUE_PHASE\" >> log";

/// A shell snippet for a phase that blocks: it starts a grandchild
/// (`sleep`), writes the grandchild's pid, its own and its parent's (the
/// supervisor that leads the command's process group) to `pids-<job>`
/// (atomically, by a rename), reports progress (so that the test knows the
/// pids are there), and waits.
pub(crate) const BLOCK: &str = "sleep 300 & echo $! > pids.tmp.$$; echo $$ >> pids.tmp.$$; \
     echo $PPID >> pids.tmp.$$; mv pids.tmp.$$ pids-$JOBQUEUE_JOB_ID; \
     echo '::progress::10 blocked' >&2; wait";

/// A config in a directory of its own, ready to be served.
pub(crate) struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// Writes `jobs.toml`: `listen` on a free loopback port, `text`, and the
    /// store `jobs.db` beside it. `text` starts with top-level keys (if
    /// any), then tables; it must not have a `[store]` table.
    pub(crate) async fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("jobs.toml");
        std::fs::write(
            &config,
            format!("listen = \"127.0.0.1:0\"\n{text}\n[store]\nsqlite = \"jobs.db\"\n"),
        )
        .unwrap();
        let setup = Self { dir, config };
        // Every config a test serves is one that `check-config` passes.
        let out = jobqueue(&["check-config", setup.config.to_str().unwrap()], &[]).await;
        assert!(
            out.status.success(),
            "check-config refused the test's config: {}",
            text_of(&out.stderr)
        );
        setup
    }

    /// The directory: config, database, and where commands run.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file in the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates the (empty) file `name` in the directory.
    pub(crate) fn touch(&self, name: &str) {
        std::fs::write(self.path(name), "").unwrap();
    }

    /// The lines `run <job> <phase>` that commands appended to `log`.
    pub(crate) fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How often phase `phase` of job `job` ran.
    pub(crate) fn runs_of(&self, job: &str, phase: &str) -> usize {
        let line = format!("run {job} {phase}");
        self.runs().iter().filter(|l| **l == line).count()
    }

    /// The pids a [`BLOCK`] phase of `job` wrote: its grandchild, itself
    /// and the supervisor of its process group.
    pub(crate) fn pids(&self, job: &str) -> Vec<i32> {
        let pids = crate::support::pids(&self.path(&format!("pids-{job}")));
        assert_eq!(pids.len(), 3, "{pids:?}");
        pids
    }

    /// Starts `jobqueue serve --config jobs.toml` and waits until it
    /// announces its address.
    pub(crate) async fn serve(&self) -> Server {
        Server::spawn(
            &["serve", "--config", self.config.to_str().unwrap()],
            self.dir(),
        )
        .await
    }

    /// Like [`serve`](Self::serve), with `token` for the requests of
    /// [`Server::call`] and friends.
    pub(crate) async fn serve_with_token(&self, token: &str) -> Server {
        let mut server = self.serve().await;
        server.token = Some(token.to_owned());
        server
    }
}

/// Runs the `jobqueue` binary with `args` and extra environment `env`
/// (without `JOBQUEUE_URL` and `JOBQUEUE_TOKEN` from the test's own
/// environment), within the deadline.
pub(crate) async fn jobqueue(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("JOBQUEUE_URL")
        .env_remove("JOBQUEUE_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("the jobqueue command did not end before the deadline")
        .unwrap()
}

/// Bytes of output as text.
pub(crate) fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `jobqueue serve`. Dropping it kills it with SIGKILL (its
/// commands die with it); a failing test prints its stderr.
pub(crate) struct Server {
    child: Child,
    addr: SocketAddr,
    /// Sent as a bearer token by [`call`](Self::call) and friends.
    pub(crate) token: Option<String>,
    /// Its stderr lines so far.
    stderr: Arc<watch::Sender<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Server {
    /// Runs `jobqueue ARGS` (a `serve` command line) in `cwd` and waits
    /// until it announces its address.
    pub(crate) async fn spawn(args: &[&str], cwd: &Path) -> Self {
        let mut child = tokio::process::Command::new(BIN)
            .args(args)
            .current_dir(cwd)
            .env_remove("JOBQUEUE_URL")
            .env_remove("JOBQUEUE_TOKEN")
            .env("JOBQUEUE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = Arc::new(watch::Sender::new(Vec::new()));
        let (addr, reader) =
            announced(child.stderr.take().unwrap(), stderr.clone(), &mut child).await;
        Self {
            child,
            addr,
            token: None,
            stderr,
            reader: Some(reader),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> rustix::process::Pid {
        let id = self.child.id().expect("the server runs");
        rustix::process::Pid::from_raw(i32::try_from(id).unwrap()).unwrap()
    }

    /// Sends `signal` to the server.
    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(self.pid(), signal).unwrap();
    }

    /// Waits (with the deadline) for the server to exit, and for the last
    /// of its stderr.
    pub(crate) async fn exit(mut self) -> (ExitStatus, String) {
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the server did not exit before the deadline")
            .unwrap();
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(DEADLINE, reader)
                .await
                .unwrap()
                .unwrap();
        }
        (status, self.stderr())
    }

    /// SIGKILL, like a crash, and waits for it to be gone.
    pub(crate) async fn crash(self) {
        self.signal(rustix::process::Signal::KILL);
        let (status, _) = self.exit().await;
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }

    /// Everything it wrote on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.borrow().join("\n")
    }

    /// Waits for a line of its stderr that contains `needle`.
    pub(crate) async fn wait_stderr(&self, needle: &str) {
        let mut lines = self.stderr.subscribe();
        tokio::time::timeout(
            DEADLINE,
            lines.wait_for(|l| l.iter().any(|l| l.contains(needle))),
        )
        .await
        .unwrap_or_else(|_| panic!("no line with {needle:?} before the deadline"))
        .unwrap();
    }

    /// A request with `headers` (and no token unless given there) and a raw
    /// `body`.
    pub(crate) async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Response<Incoming> {
        send(self.addr, method, path, headers, body).await
    }

    /// A request with the server's token (if any) and an optional JSON body.
    pub(crate) async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = body.map(|b| serde_json::to_vec(b).unwrap());
        Reply::read(self.raw(method, path, &headers, body).await).await
    }

    /// `GET path`.
    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Enqueues `body` (`POST /jobs`), expects 201, returns the job's id.
    pub(crate) async fn enqueue(&self, body: Value) -> String {
        let reply = self.post("/jobs", &body).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["id"].as_str().unwrap().to_owned()
    }

    /// `GET /jobs/{id}`, expects 200.
    pub(crate) async fn job(&self, id: &str) -> Value {
        let reply = self.get(&format!("/jobs/{id}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    /// An event stream (`GET path`, with the token and `headers`); expects
    /// 200 and `text/event-stream`.
    pub(crate) async fn sse(&self, path: &str, headers: &[(&str, &str)]) -> Sse {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all = headers.to_vec();
        if let Some(auth) = &auth {
            all.push(("authorization", auth.as_str()));
        }
        let response = self.raw(Method::GET, path, &all, None).await;
        assert_eq!(response.status(), 200, "GET {path}");
        assert_eq!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .split(';')
                .next(),
            Some("text/event-stream")
        );
        Sse::new(response.into_body())
    }

    /// Waits for the first event of job `id` after `after` whose type is one
    /// of `types`.
    pub(crate) async fn wait_event(&self, id: &str, after: u64, types: &[&str]) -> Event {
        let mut events = self
            .sse(&format!("/jobs/{id}/events?after={after}"), &[])
            .await;
        events.until(|e| types.contains(&e.kind.as_str())).await
    }

    /// Waits for job `id` to end (completed, failed or cancelled) after
    /// event `after`, and returns the job.
    pub(crate) async fn finished_after(&self, id: &str, after: u64) -> Value {
        self.wait_event(id, after, &FINAL).await;
        self.job(id).await
    }

    /// Waits for job `id` to end and returns it.
    pub(crate) async fn finished(&self, id: &str) -> Value {
        self.finished_after(id, 0).await
    }

    /// Asks `GET path` again until `holds` of its JSON (within the
    /// deadline), and returns it. For state the server shows only when
    /// asked: the outcome of a webhook attempt is recorded after the
    /// receiver has answered, and no event follows it.
    pub(crate) async fn eventually(&self, path: &str, holds: impl Fn(&Value) -> bool) -> Value {
        let ask = async {
            loop {
                let reply = self.get(path).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                let body = reply.json();
                if holds(&body) {
                    return body;
                }
            }
        };
        tokio::time::timeout(DEADLINE, ask)
            .await
            .unwrap_or_else(|_| panic!("GET {path} did not come to hold before the deadline"))
    }

    /// Every event of job `id`, from its first up to its first end
    /// ([`FINAL`]).
    pub(crate) async fn history(&self, id: &str) -> Vec<Event> {
        let mut events = self.sse(&format!("/jobs/{id}/events"), &[]).await;
        let mut all = Vec::new();
        loop {
            let e = events.next().await;
            let end = FINAL.contains(&e.kind.as_str());
            all.push(e);
            if end {
                return all;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of jobqueue serve ({}) ---\n{}",
                self.addr,
                self.stderr()
            );
        }
    }
}

/// Reads the server's stderr until `listening on http://ADDR`, then keeps
/// reading it into `lines` in the background.
async fn announced(
    stderr: ChildStderr,
    lines: Arc<watch::Sender<Vec<String>>>,
    child: &mut Child,
) -> (SocketAddr, JoinHandle<()>) {
    let mut reader = BufReader::new(stderr).lines();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.send_modify(|l| l.push(line.clone()));
            if let Some(addr) = line.strip_prefix("listening on http://") {
                return Some(addr.parse::<SocketAddr>().unwrap());
            }
        }
        None
    })
    .await
    .expect("the server did not announce its address before the deadline");
    let Some(addr) = found else {
        let status = child.wait().await.unwrap();
        panic!(
            "the server exited ({status}) before listening:\n{}",
            lines.borrow().join("\n")
        );
    };
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            lines.send_modify(|l| l.push(line));
        }
    });
    (addr, reader)
}

/// One HTTP/1.1 request on a connection of its own.
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("no answer before the deadline")
        .unwrap()
}

/// A whole answer.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// Reads the whole answer.
    pub(crate) async fn read(response: Response<Incoming>) -> Self {
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .expect("the body did not end before the deadline")
            .unwrap()
            .to_bytes();
        Self {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        text_of(&self.body)
    }

    /// Checks that this is the API's error `code` with `status`, in its
    /// shape, and returns the body.
    pub(crate) fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.headers["content-type"].to_str().unwrap(),
            "application/json",
            "{}",
            self.text()
        );
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        body
    }
}

/// One event of an SSE stream: its frame's `id` and `event`, and the JSON
/// of its `data`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub(crate) seq: u64,
    pub(crate) kind: String,
    pub(crate) data: Value,
}

impl Event {
    /// The event's job.
    pub(crate) fn job(&self) -> &str {
        self.data["job_id"].as_str().unwrap()
    }
}

/// An SSE stream read frame by frame.
pub(crate) struct Sse {
    body: Incoming,
    buf: Vec<u8>,
    /// The `retry:` field, when the stream sent one before its first event.
    pub(crate) retry: Option<String>,
    /// Whether an event was read yet.
    started: bool,
}

impl Sse {
    fn new(body: Incoming) -> Self {
        Self {
            body,
            buf: Vec::new(),
            retry: None,
            started: false,
        }
    }

    /// The next event (comments and `retry:` are taken in passing); fails
    /// the test after the deadline.
    pub(crate) async fn next(&mut self) -> Event {
        tokio::time::timeout(DEADLINE, self.read())
            .await
            .expect("no event before the deadline")
    }

    async fn read(&mut self) -> Event {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(event) = self.parse(&text_of(&frame)) {
                    return event;
                }
                continue;
            }
            let frame = self
                .body
                .frame()
                .await
                .expect("the event stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// One frame: an event, or `None` for a comment or `retry:`.
    fn parse(&mut self, frame: &str) -> Option<Event> {
        let (mut id, mut kind, mut data) = (None, None, None);
        for line in frame.lines() {
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "retry" if !self.started => self.retry = Some(value.to_owned()),
                "id" => id = Some(value.parse::<u64>().unwrap()),
                "event" => kind = Some(value.to_owned()),
                "data" => {
                    assert!(data.is_none(), "one data line per event: {frame}");
                    data = Some(serde_json::from_str::<Value>(value).unwrap());
                }
                _ => panic!("unexpected SSE line {line:?} in {frame:?}"),
            }
        }
        let data = data?;
        let (seq, kind) = (id.expect("an id"), kind.expect("an event type"));
        assert_eq!(data["seq"], seq, "the id is the event's seq");
        assert_eq!(data["type"], kind.as_str(), "the event name is its type");
        self.started = true;
        Some(Event { seq, kind, data })
    }

    /// Reads events up to and including the first that `pick` accepts.
    pub(crate) async fn until(&mut self, pick: impl Fn(&Event) -> bool) -> Event {
        loop {
            let event = self.next().await;
            if pick(&event) {
                return event;
            }
        }
    }

    /// Reads events up to and including the first that `pick` accepts, and
    /// returns them all.
    pub(crate) async fn collect_until(&mut self, pick: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut all = Vec::new();
        loop {
            let event = self.next().await;
            let last = pick(&event);
            all.push(event);
            if last {
                return all;
            }
        }
    }
}

/// The types of `events`, in order.
pub(crate) fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}
