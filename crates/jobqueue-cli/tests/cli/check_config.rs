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

#[test]
fn a_good_file_exits_0_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.toml");
    std::fs::write(
        &file,
        "[pipelines.build]\n[[pipelines.build.phases]]\nname = \"a\"\ncommand = [\"true\"]\n[pipelines.deploy]\n[[pipelines.deploy.phases]]\nname = \"b\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let out = jobqueue(&["check-config", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: ok (2 pipelines: build, deploy, 0 webhook endpoints)\n",
            file.display()
        )
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
fn serve_reports_config_errors_and_refuses_postgres() {
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
    let out = jobqueue(&["serve", "--postgres", "postgres://jobs@localhost/jobs"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: the PostgreSQL store is not built yet; use an SQLite file (`[store] sqlite = \"FILE\"` or `--db FILE`)\n"
    );
    let out = jobqueue(&["serve", "--listen", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--listen: invalid listen address"),
        "{}",
        text(&out.stderr)
    );
}
