//! The client commands against the real server: `enqueue`, `jobs`,
//! `show`, `cancel`, `retry` and `tail`, as text and with `--json`, the
//! server and token from `JOBQUEUE_URL` / `JOBQUEUE_TOKEN` or `--url`.
//! Also `serve` without a config: the demo pipeline on `./jobqueue.db`.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::{BLOCK, Server, Setup, jobqueue, phase, text_of};
use crate::support::{BIN, DEADLINE};

const TOKEN: &str = "cl1ent-t0ken";

/// A running `jobqueue tail --json`, read line by line.
struct Tail {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Tail {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(BIN);
        command
            .arg("tail")
            .args(args)
            .arg("--json")
            .env_remove("JOBQUEUE_URL")
            .env_remove("JOBQUEUE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// Events it prints, up to and including the first that `pick` accepts.
    async fn until(&mut self, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
                .await
                .expect("tail printed nothing more before the deadline")
                .unwrap()
                .expect("tail ended");
            let event: Value = serde_json::from_str(&line).unwrap();
            let last = pick(&event);
            seen.push(event);
            if last {
                return seen;
            }
        }
    }

    /// Ends it (it follows the stream until killed).
    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Whether `event` is of job `id` and type `kind`.
fn is<'a>(id: &'a str, kind: &'static str) -> impl Fn(&Value) -> bool + 'a {
    move |e: &Value| e["job_id"] == id && e["type"] == kind
}

/// Runs a client command with `env` and expects success; returns stdout.
async fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = jobqueue(args, env).await;
    assert!(
        out.status.success(),
        "jobqueue {args:?}: {}",
        text_of(&out.stderr)
    );
    text_of(&out.stdout)
}

async fn server() -> (Setup, Server) {
    let text = format!(
        "token = \"{TOKEN}\"\n[pipelines.quick]\n{}{}[pipelines.slow]\n{}",
        phase("quick", "a", "echo '{\"v\": 1}'"),
        phase("quick", "b", "echo '\"done\"'"),
        phase(
            "slow",
            "a",
            &format!("if [ -f release ]; then echo '\"released\"'; else {BLOCK}; fi"),
        ),
    );
    let setup = Setup::new(&text).await;
    let server = setup.serve_with_token(TOKEN).await;
    (setup, server)
}

#[tokio::test]
async fn enqueue_jobs_show_cancel_retry_and_tail_with_the_environment() {
    let (setup, server) = server().await;
    let url = server.url();
    let env = [("JOBQUEUE_URL", url.as_str()), ("JOBQUEUE_TOKEN", TOKEN)];

    // tail of every job, started before there is any.
    let mut tail = Tail::start(&[], &env);
    let enqueued: Value =
        serde_json::from_str(&ok(&["enqueue", "slow", "--json"], &env).await).unwrap();
    assert_eq!(
        (&enqueued["pipeline"], &enqueued["status"]),
        (&json!("slow"), &json!("queued"))
    );
    let id = enqueued["id"].as_str().unwrap().to_owned();
    // The phase runs and blocks: tail shows its events as they happen.
    let seen = tail.until(is(&id, "job.phase.progress")).await;
    let kinds: Vec<_> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "job.created",
            "job.started",
            "job.phase.started",
            "job.phase.progress"
        ]
    );

    let table = ok(&["jobs"], &env).await;
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("slow") && row.contains("running"), "{row}");
    let listed: Value =
        serde_json::from_str(&ok(&["jobs", "--status", "running", "--json"], &env).await).unwrap();
    assert_eq!(listed["jobs"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);

    let stopping = ok(&["cancel", &id], &env).await;
    assert!(stopping.contains(&id), "{stopping}");
    tail.until(is(&id, "job.cancelled")).await;
    let again = jobqueue(&["cancel", &id], &env).await;
    assert_eq!(again.status.code(), Some(1));
    let stderr = text_of(&again.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("conflict, HTTP 409"),
        "{stderr}"
    );

    setup.touch("release");
    let retried: Value = serde_json::from_str(&ok(&["retry", &id, "--json"], &env).await).unwrap();
    assert_eq!(retried["status"], "queued");
    let after_retry = tail.until(is(&id, "job.completed")).await;
    assert_eq!(after_retry[0]["type"], "job.retried");
    tail.kill().await;

    let shown = ok(&["show", &id], &env).await;
    assert!(
        shown.contains(&id) && shown.contains("completed") && shown.contains("released"),
        "{shown}"
    );
    let shown: Value = serde_json::from_str(&ok(&["show", &id, "--json"], &env).await).unwrap();
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["phases"][0]["result"], "released");
    assert_eq!(shown, server.job(&id).await);
}

#[tokio::test]
async fn url_and_token_flags_and_errors() {
    let (_setup, server) = server().await;
    let url = server.url();
    let token = [("JOBQUEUE_TOKEN", TOKEN)];

    // --url instead of JOBQUEUE_URL; the id alone on stdout.
    let printed = ok(
        &[
            "enqueue",
            "quick",
            "--input",
            "{\"x\": 1}",
            "--priority",
            "3",
            "--unique-key",
            "k1",
            "--url",
            &url,
        ],
        &token,
    )
    .await;
    let id = printed.strip_suffix('\n').unwrap().to_owned();
    assert_eq!(id.len(), 36, "{printed:?}");
    // tail of one job replays it from its start.
    let mut tail = Tail::start(&[&id, "--url", &url], &token);
    let events = tail.until(is(&id, "job.completed")).await;
    tail.kill().await;
    assert_eq!(events[0]["type"], "job.created");
    assert_eq!(events[0]["data"]["priority"], 3);
    assert_eq!(
        events.last().unwrap()["data"]["results"],
        json!({"a": {"v": 1}, "b": "done"})
    );
    let job: Value =
        serde_json::from_str(&ok(&["show", &id, "--json", "--url", &url], &token).await).unwrap();
    assert_eq!(
        (&job["input"], &job["unique_key"]),
        (&json!({"x": 1}), &json!("k1"))
    );

    // Without the token, or with a wrong one: the server's 401.
    for env in [vec![], vec![("JOBQUEUE_TOKEN", "wrong")]] {
        let out = jobqueue(&["show", &id, "--url", &url], &env).await;
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text_of(&out.stderr).contains("unauthorized, HTTP 401"),
            "{}",
            text_of(&out.stderr)
        );
    }
    // A job that does not exist.
    let out = jobqueue(
        &[
            "show",
            "0192f7c5-5d2a-7cc3-9a51-2f0e3c6d1b7a",
            "--url",
            &url,
        ],
        &token,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text_of(&out.stderr).contains("not_found, HTTP 404"),
        "{}",
        text_of(&out.stderr)
    );
}

#[tokio::test]
async fn serve_without_a_config_runs_the_demo_on_jobqueue_db() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::spawn(&["serve", "--listen", "127.0.0.1:0"], dir.path()).await;
    let url = server.url();
    let env = [("JOBQUEUE_URL", url.as_str())];
    let id = ok(&["enqueue", "demo", "--input", "{\"seconds\": 0.1}"], &env).await;
    let job = server.finished(id.trim()).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        job["phases"][2]["result"],
        json!({"summary": "10 items processed"})
    );
    assert!(dir.path().join("jobqueue.db").is_file());
}
