//! `jobqueue check-config` and the config errors of `jobqueue serve`, run as
//! the real binary.

use std::process::Output;

use crate::support::BIN;

fn jobqueue(args: &[&str]) -> Output {
    std::process::Command::new(BIN).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `check-config` on a good file with `config`: its summary, with the
/// file's path replaced by `FILE`.
fn summary_of(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.toml");
    std::fs::write(&file, config).unwrap();
    let out = jobqueue(&["check-config", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).replace(&file.display().to_string(), "FILE")
}

#[test]
fn a_good_file_exits_0_with_a_summary() {
    assert_eq!(
        summary_of(
            "[pipelines.build]\n[[pipelines.build.phases]]\nname = \"a\"\ncommand = [\"true\"]\n[pipelines.deploy]\n[[pipelines.deploy.phases]]\nname = \"b\"\ncommand = [\"true\"]\n"
        ),
        "FILE: ok (2 pipelines: build, deploy, 0 webhook endpoints)\n"
    );
}

#[test]
fn the_summary_counts_schedules() {
    assert_eq!(
        summary_of(
            "[pipelines.build]\n[[pipelines.build.phases]]\nname = \"a\"\ncommand = [\"true\"]\n[[schedules]]\nname = \"nightly\"\npipeline = \"build\"\ncron = \"0 3 * * *\"\n"
        ),
        "FILE: ok (1 pipeline: build, 0 webhook endpoints, 1 schedule)\n"
    );
}

#[test]
fn a_bad_file_exits_1_with_every_error_and_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "concurrency = 0\nbogus = 1\n[pipelines.p]\n[[pipelines.p.phases]]\nname = \"a\"\ncommand = []\n",
    )
    .unwrap();
    let name = file.display().to_string();
    let out = jobqueue(&["check-config", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert_eq!(lines[0], format!("{name}:1:15: must be at least 1"));
    assert!(
        lines[1].starts_with(&format!("{name}:2:1: unknown field `bogus`")),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with(&format!("{name}:6:11: the command is empty")),
        "{stderr}"
    );
    assert_eq!(lines[3], format!("{name}: 3 errors"));
}

#[test]
fn a_missing_file_exits_1() {
    let out = jobqueue(&["check-config", "/nonexistent/jobs.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("/nonexistent/jobs.toml: cannot read: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_bad_command_line_exits_2() {
    let out = jobqueue(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let out = jobqueue(&["serve", "--db", "a.db", "--postgres", "postgres://h/db"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn serve_reports_config_errors_and_an_unreachable_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "concurrency = \"many\"\n").unwrap();
    let out = jobqueue(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("error: {}:1:15: ", file.display())),
        "{}",
        text(&out.stderr)
    );
    // Port 1 on loopback: nothing listens, the connection is refused at
    // once. The password stays out of the message.
    let out = jobqueue(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--postgres",
        "postgres://jobs:hunter2@127.0.0.1:1/jobs",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .starts_with("error: cannot open the database postgres://jobs:***@127.0.0.1:1/jobs: "),
        "{}",
        text(&out.stderr)
    );
    let out = jobqueue(&["serve", "--listen", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--listen: invalid listen address"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_kind_of_error_is_reported_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        [
            "listen = \"127.0.0.1:7700\"",
            "shutdown_timeout = \"soon\"",
            "max_body = \"lots\"",
            "[retention]",
            "interval = \"0s\"",
            "[[webhooks]]",
            "url = \"ftp://x\"",
            "secret = \"nope\"",
            "events = [\"job.exploded\"]",
            "[pipelines.p]",
            "backoff_initial = \"1m\"",
            "backoff_max = \"1s\"",
            "[[pipelines.p.phases]]",
            "name = \"a\"",
            "command = [\"true\"]",
            "workdir = \"missing\"",
            "env = { JOBQUEUE_ATTEMPT = \"1\" }",
            "[[pipelines.p.phases]]",
            "name = \"a\"",
            "command = [\"true\"]",
            "[pipelines.q]",
        ]
        .join("\n"),
    )
    .unwrap();
    let name = file.display().to_string();
    let out = jobqueue(&["check-config", &name]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let expected = [
        ("2:20", "invalid duration \"soon\""),
        ("3:12", "invalid size \"lots\""),
        ("5:12", "must be longer than zero"),
        ("7:7", "must start with http:// or https://"),
        ("8:10", "a webhook secret must be \"whsec_\""),
        ("9:11", "unknown event type \"job.exploded\""),
        (
            "11:19",
            "backoff_initial (1m) must not be longer than backoff_max (1s)",
        ),
        ("16:11", "is not a directory"),
        ("17:9", "JOBQUEUE_ATTEMPT is set by the server"),
        ("19:8", "pipeline \"p\" has two phases named \"a\""),
        ("21:1", "pipeline \"q\" has no phases"),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{stderr}");
    for (line, (place, message)) in lines.iter().zip(expected) {
        let prefix = format!("{name}:{place}: ");
        assert!(
            line.starts_with(&prefix) && line.contains(message),
            "{line:?} should be at {place} and say {message:?}"
        );
    }
    assert_eq!(lines[expected.len()], format!("{name}: 11 errors"));
}

#[test]
fn a_syntax_error_is_reported_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "concurrency = 4\n[pipelines.p\nname = 1\n").unwrap();
    let name = file.display().to_string();
    let out = jobqueue(&["check-config", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("{name}:2:13: unclosed table, expected `]`\n{name}: 1 error\n")
    );
}
