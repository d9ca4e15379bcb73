//! The real `jobqueue serve` as a child process, for the tests that use it
//! from outside as a person would: the dashboard in a browser, and
//! `jobqueue tail` in a terminal and in a pipe.
//!
//! Its `steps` pipeline runs command phases that the test moves on: phase
//! `fetch` reports 25 %, 50 % and 75 %, and after each waits for the test
//! to open a gate (a file named after the job and the step), so the test
//! sees each value without racing the phase.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobqueue_cli::client::Client;
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{BIN, DEADLINE};

/// The steps at which phase `fetch` of pipeline `steps` waits for a gate.
pub(crate) const STEPS: [u64; 3] = [25, 50, 75];

/// The pipelines of the served config, their gates in `dir`:
/// - `steps`: `fetch` (gated progress, see [`STEPS`]), then `build`.
/// - `flaky`: `try` fails for good (exit 100, with markup in its error)
///   until the file `fixed` exists in `dir`, then succeeds.
/// - `echo`: `show` answers its stdin (the job input among it) as its result.
pub(crate) fn pipelines(dir: &Path) -> String {
    let gates = dir.display();
    format!(
        r#"
[pipelines.steps]
max_attempts = 1

[[pipelines.steps.phases]]
name = "fetch"
command = ["sh", "-c", '''
for p in 25 50 75; do
  echo "::progress::$p fetching, step $p" >&2
  while [ ! -e "{gates}/$JOBQUEUE_JOB_ID.$p" ]; do sleep 0.02; done
done
echo '{{"fetched": 3}}'
''']

[[pipelines.steps.phases]]
name = "build"
command = ["sh", "-c", "echo '{{\"built\": true}}'"]

[pipelines.flaky]
max_attempts = 1

[[pipelines.flaky.phases]]
name = "try"
command = ["sh", "-c", '''
if [ -e "{gates}/fixed" ]; then echo '"fixed"'; exit 0; fi
echo "<img src=x onerror=window.__xss=3> broke" >&2
exit 100
''']

[pipelines.echo]

[[pipelines.echo.phases]]
name = "show"
command = ["sh", "-c", "cat"]
"#
    )
}

/// A running `jobqueue serve`.
pub(crate) struct Served {
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// `127.0.0.1:PORT`, to start again on the same address.
    pub(crate) addr: String,
    pub(crate) token: Option<String>,
    child: Child,
    /// Everything it wrote on stderr, for failure messages.
    log: Arc<Mutex<String>>,
    config: PathBuf,
}

impl Served {
    /// Starts `jobqueue serve` with `config` (written beside it in `dir`)
    /// on `listen`, and waits until it accepts connections.
    pub(crate) async fn start(dir: &Path, config: &str, listen: &str) -> Self {
        let path = dir.join("jobqueue.toml");
        std::fs::write(&path, config).unwrap();
        let token = config
            .lines()
            .find_map(|l| l.strip_prefix("token = "))
            .map(|t| t.trim_matches('"').to_owned());
        Self::spawn(path, listen, token).await
    }

    async fn spawn(config: PathBuf, listen: &str, token: Option<String>) -> Self {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", listen])
            .env("JOBQUEUE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let url = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(url) = line.strip_prefix("listening on ") {
                    return url.to_owned();
                }
            }
            panic!("serve ended: {}", log.lock().unwrap())
        })
        .await
        .expect("serve listens in time");
        // Keep reading its stderr, so that it never blocks on a full pipe.
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self {
            addr: url.trim_start_matches("http://").to_owned(),
            url,
            token,
            child,
            log,
            config,
        }
    }

    /// Stops it as a SIGTERM does, and checks that it exits 0.
    pub(crate) async fn stop(mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id().unwrap()).unwrap()).unwrap();
        kill_process(pid, Signal::TERM).unwrap();
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("serve exits in time after SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}: {}", self.log.lock().unwrap());
    }

    /// Stops it, runs `while_down`, and starts it again on the same address
    /// and database.
    pub(crate) async fn restart(self, while_down: impl AsyncFnOnce()) -> Self {
        let (config, addr, token) = (self.config.clone(), self.addr.clone(), self.token.clone());
        self.stop().await;
        while_down().await;
        Self::spawn(config, &addr, token).await
    }

    /// A client of its API, with its token.
    pub(crate) fn client(&self) -> Client {
        Client::new(&self.url, self.token.clone()).unwrap()
    }

    /// Enqueues `input` on `pipeline`; returns the job's id.
    pub(crate) async fn enqueue(&self, pipeline: &str, input: Value) -> String {
        let body = serde_json::json!({"pipeline": pipeline, "input": input});
        let answer = self
            .client()
            .call(hyper::Method::POST, "/jobs", Some(&body))
            .await
            .unwrap();
        answer.body["id"].as_str().unwrap().to_owned()
    }

    /// The job, as the API answers it.
    pub(crate) async fn job(&self, id: &str) -> Value {
        self.client()
            .call(hyper::Method::GET, &format!("/jobs/{id}"), None)
            .await
            .unwrap()
            .body
    }
}

/// Lets phase `fetch` of job `id` go on after `step`.
pub(crate) fn open_gate(dir: &Path, id: &str, step: u64) {
    std::fs::write(dir.join(format!("{id}.{step}")), "").unwrap();
}

/// Waits, polling every 50 ms until the deadline, for `check` to give a
/// value; `what` names it in the failure.
pub(crate) async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
