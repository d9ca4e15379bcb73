//! The config file: good files and their defaults, and every kind of bad
//! file with the place of each error.

use std::path::Path;
use std::time::Duration;

use jobqueue::EventType;
use jobqueue_cli::config::{Config, Store};

/// The errors of `text` as `check-config` prints them, one per line.
fn errors(text: &str) -> Vec<String> {
    match Config::parse(text, Path::new("/srv"), "c.toml") {
        Ok(_) => panic!("the config was accepted:\n{text}"),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

fn parse(text: &str, dir: &Path) -> Config {
    Config::parse(text, dir, "c.toml").unwrap_or_else(|e| panic!("{e}"))
}

const PIPELINE: &str =
    "[pipelines.build]\n[[pipelines.build.phases]]\nname = \"a\"\ncommand = [\"true\"]\n";

#[test]
fn the_documented_example_reads_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
listen = "127.0.0.1:7700"
token = "s3cret"
concurrency = 8
shutdown_timeout = "30s"
max_body = "1MiB"
webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
allow_private_webhook_urls = false

[store]
sqlite = "jobqueue.db"
lease = "30s"

[retention]
stale_after = "7d"
delete_after = "30d"
interval = "1m"

[[webhooks]]
url = "https://example.com/hooks/jobs"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["job.completed", "job.failed"]
retry_schedule = ["5s", "5m", "30m", "2h", "5h", "10h"]
timeout = "15s"

[pipelines.build]
max_attempts = 3
backoff_initial = "1s"
backoff_max = "5m"
timeout = "1h"
concurrency = 2

[[pipelines.build.phases]]
name = "fetch"
command = ["sh", "-c", "./fetch.sh"]
timeout = "10m"
env = { REGION = "eu" }
workdir = "."

[[pipelines.build.phases]]
name = "compile"
command = ["make", "all"]
"#;
    let c = parse(text, dir.path());
    assert_eq!(c.listen, "127.0.0.1:7700");
    assert_eq!(c.token.as_deref(), Some("s3cret"));
    assert_eq!(c.concurrency, 8);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.max_body, 1024 * 1024);
    assert_eq!(c.store, Store::Sqlite(dir.path().join("jobqueue.db")));
    assert_eq!(c.lease, Duration::from_secs(30));
    let r = c.retention.unwrap();
    assert_eq!(
        (r.stale_after, r.delete_after, r.interval),
        (
            Duration::from_secs(7 * 86400),
            Duration::from_secs(30 * 86400),
            Duration::from_secs(60)
        )
    );
    assert_eq!(
        c.webhooks.default_secret.as_deref(),
        Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    );
    assert!(!c.webhooks.allow_private);
    let hook = &c.webhooks.endpoints[0];
    assert_eq!(hook.url, "https://example.com/hooks/jobs");
    assert_eq!(
        hook.events,
        Some(vec![EventType::JobCompleted, EventType::JobFailed])
    );
    assert_eq!(hook.retry_schedule.len(), 6);
    assert_eq!(hook.retry_schedule[5], Duration::from_secs(10 * 3600));
    assert_eq!(hook.timeout, Duration::from_secs(15));
    c.webhooks.validate().unwrap();
    let p = &c.pipelines[0];
    assert_eq!(p.name, "build");
    assert_eq!(
        (p.retry.max_attempts, p.retry.initial, p.retry.max),
        (3, Duration::from_secs(1), Duration::from_secs(300))
    );
    assert_eq!(p.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(p.concurrency, Some(2));
    let fetch = &p.phases[0];
    assert_eq!(fetch.name, "fetch");
    assert_eq!(fetch.command, ["sh", "-c", "./fetch.sh"]);
    assert_eq!(fetch.timeout, Some(Duration::from_secs(600)));
    assert_eq!(fetch.env, [("REGION".to_owned(), "eu".to_owned())]);
    assert_eq!(fetch.workdir, dir.path().join("."));
    assert_eq!(p.phases[1].workdir, dir.path());
}

#[test]
fn an_empty_file_takes_every_default() {
    let c = parse("", Path::new("/srv/jobs"));
    assert_eq!(c.listen, "127.0.0.1:7700");
    assert_eq!(c.token, None);
    assert_eq!(c.concurrency, 8);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.max_body, 1024 * 1024);
    assert_eq!(c.store, Store::Sqlite("/srv/jobs/jobqueue.db".into()));
    assert_eq!(c.lease, Duration::from_secs(30));
    assert!(c.retention.is_some());
    assert!(c.webhooks.endpoints.is_empty());
    assert!(c.pipelines.is_empty());
}

#[test]
fn pipeline_defaults_and_disabled_retention() {
    let c = parse(
        &format!("[retention]\nenabled = false\n{PIPELINE}"),
        Path::new("/srv"),
    );
    assert!(c.retention.is_none());
    let p = &c.pipelines[0];
    assert_eq!(
        (
            p.retry.max_attempts,
            p.retry.initial,
            p.retry.max,
            p.timeout,
            p.concurrency
        ),
        (
            3,
            Duration::from_secs(1),
            Duration::from_secs(300),
            None,
            None
        )
    );
    assert_eq!(p.phases[0].timeout, None);
    assert_eq!(p.phases[0].workdir, Path::new("/srv"));
    assert!(p.phases[0].env.is_empty());
}

#[test]
fn durations_and_sizes_in_every_unit() {
    let text = format!(
        "shutdown_timeout = \"500ms\"\nmax_body = \"512KiB\"\n[retention]\nstale_after = \"3h\"\ndelete_after = \"7d\"\ninterval = \"5m\"\n{PIPELINE}timeout = \"2s\"\n"
    );
    let c = parse(&text, Path::new("/srv"));
    assert_eq!(c.shutdown_timeout, Duration::from_millis(500));
    assert_eq!(c.max_body, 512 * 1024);
    let r = c.retention.unwrap();
    assert_eq!(r.stale_after, Duration::from_secs(3 * 3600));
    assert_eq!(r.interval, Duration::from_secs(300));
    assert_eq!(
        c.pipelines[0].phases[0].timeout,
        Some(Duration::from_secs(2))
    );
}

#[test]
fn postgres_is_accepted_by_the_file() {
    let c = parse(
        "[store]\npostgres = \"postgres://jobs@db/jobs\"\n",
        Path::new("/srv"),
    );
    assert_eq!(c.store, Store::Postgres("postgres://jobs@db/jobs".into()));
}

#[test]
fn unknown_keys_are_errors_at_their_place() {
    let text = format!(
        "listne = \"x\"\n{PIPELINE}timout = \"1s\"\n[store]\nsqlite = \"a.db\"\nleese = \"1s\"\n"
    );
    assert_eq!(
        errors(&text),
        [
            "c.toml:1:1: unknown field `listne`, expected one of `listen`, `token`, `concurrency`, `shutdown_timeout`, `max_body`, `webhook_secret`, `allow_private_webhook_urls`, `store`, `retention`, `webhooks`, `pipelines`, `schedules`",
            "c.toml:6:1: unknown field `timout`, expected one of `name`, `command`, `timeout`, `env`, `workdir`",
            "c.toml:9:1: unknown field `leese`, expected one of `sqlite`, `postgres`, `lease`",
        ]
    );
}

#[test]
fn syntax_errors_have_their_place() {
    let lines = errors("listen = \"127.0.0.1:7700\"\nconcurrency = = 3\n");
    assert!(lines[0].starts_with("c.toml:2:"), "{lines:?}");
}

#[test]
fn values_of_the_wrong_kind() {
    let text = "concurrency = 0\nshutdown_timeout = 30\nmax_body = \"lots\"\nlisten = \"7700\"\ntoken = \"\"\n[retention]\ninterval = \"0s\"\nstale_after = \"5 fortnights\"\n";
    assert_eq!(
        errors(text),
        [
            "c.toml:1:15: must be at least 1",
            "c.toml:2:20: a duration needs its unit: write \"30s\", \"30ms\" or similar, in quotes",
            "c.toml:3:12: invalid size \"lots\": expected a size like \"512KiB\" or \"1MiB\"",
            "c.toml:4:10: invalid listen address \"7700\": expected HOST:PORT, like \"127.0.0.1:7700\"",
            "c.toml:5:9: the token must not be empty (leave `token` out to need none)",
            "c.toml:7:12: must be longer than zero",
            "c.toml:8:15: invalid duration \"5 fortnights\": unknown time unit \"fortnights\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)",
        ]
    );
}

#[test]
fn pipelines_without_phases_or_commands() {
    let text = "[pipelines.empty]\nmax_attempts = 2\n[pipelines.none]\nphases = []\n[pipelines.bad]\n[[pipelines.bad.phases]]\nname = \"a\"\ncommand = []\n[[pipelines.bad.phases]]\nname = \"b\"\ncommand = [\"\"]\n[[pipelines.bad.phases]]\nname = \"\"\ncommand = [\"x\"]\n";
    assert_eq!(
        errors(text),
        [
            "c.toml:1:1: pipeline \"empty\" has no phases: add a [[pipelines.empty.phases]] table",
            "c.toml:4:10: pipeline \"none\" has no phases: add a [[pipelines.none.phases]] table",
            "c.toml:8:11: the command is empty: give the program and its arguments, like [\"sh\", \"-c\", \"./run.sh\"]",
            "c.toml:11:11: the command's program is an empty string",
            "c.toml:13:8: name must not be empty",
        ]
    );
}

#[test]
fn a_phase_without_a_command_and_with_a_bad_name_gets_both_errors() {
    let text = "[pipelines.p]\n[[pipelines.p.phases]]\nname = 5\n";
    assert_eq!(
        errors(text),
        [
            "c.toml:2:1: missing field `command`",
            "c.toml:3:8: invalid type: integer `5`, expected a name",
        ]
    );
}

#[test]
fn webhooks_with_bad_secrets_urls_and_event_types() {
    let text = "webhook_secret = \"s3cret\"\n[[webhooks]]\nurl = \"ftp://example.com\"\nsecret = \"whsec_!!!\"\nevents = [\"job.completed\", \"job.exploded\"]\ntimeout = \"2h\"\nretry_schedule = [\"5s\", \"20y\"]\n[[webhooks]]\nurl = \"https://a.example/h\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n[[webhooks]]\nurl = \"https://a.example/h\"\nsecret = \"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
    let lines = errors(text);
    let expected_starts = [
        "c.toml:1:18: a webhook secret must be \"whsec_\" followed by a base64 key",
        "c.toml:3:7: webhook URL \"ftp://example.com\" must start with http:// or https://",
        "c.toml:4:10: a webhook secret must be \"whsec_\" followed by a base64 key",
        "c.toml:5:28: unknown event type \"job.exploded\"",
        "c.toml:6:11: a webhook timeout may be at most 1h",
        "c.toml:7:25: a retry delay may be at most ten years (3650d)",
        "c.toml:12:7: webhook endpoint https://a.example/h is configured twice",
        "c.toml:13:10: a webhook secret must be \"whsec_\" followed by a base64 key",
    ];
    assert_eq!(lines.len(), expected_starts.len(), "{lines:#?}");
    for (line, start) in lines.iter().zip(expected_starts) {
        assert!(
            line.starts_with(start),
            "{line:?} should start with {start:?}"
        );
    }
}

#[test]
fn store_with_both_or_neither() {
    assert_eq!(
        errors("[store]\nsqlite = \"a.db\"\npostgres = \"postgres://h/db\"\n"),
        ["c.toml:1:1: [store] takes one of `sqlite` and `postgres`, not both"]
    );
    assert_eq!(
        errors("[store]\nlease = \"10s\"\n"),
        ["c.toml:1:1: [store] needs `sqlite = \"FILE\"` or `postgres = \"URL\"`"]
    );
    // A value refused for its own error does not also count as missing.
    assert_eq!(
        errors("[store]\nsqlite = 5\n"),
        ["c.toml:2:10: invalid type: integer `5`, expected path string"]
    );
    assert_eq!(
        errors("[store]\npostgres = \"mysql://h/db\"\n"),
        [
            "c.toml:2:12: invalid PostgreSQL URL \"mysql://h/db\": expected \"postgres://USER@HOST/DATABASE\""
        ]
    );
}

#[test]
fn checks_across_values_of_a_pipeline() {
    let text = "[pipelines.p]\nbackoff_initial = \"10m\"\n[[pipelines.p.phases]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { JOBQUEUE_PHASE = \"x\", \"A=B\" = \"y\" }\nworkdir = \"no/such/dir\"\n[[pipelines.p.phases]]\nname = \"a\"\ncommand = [\"y\"]\n[pipelines.q]\nbackoff_initial = \"2s\"\nbackoff_max = \"1s\"\ntimeout = \"0ms\"\nconcurrency = 0\nmax_attempts = 0\n[[pipelines.q.phases]]\nname = \"a\"\ncommand = [\"x\"]\ntimeout = \"0s\"\n";
    assert_eq!(
        errors(text),
        [
            "c.toml:2:19: backoff_initial (10m) must not be longer than backoff_max (5m), its default",
            "c.toml:6:9: JOBQUEUE_PHASE is set by the server for every phase; `env` cannot set it",
            "c.toml:6:31: \"A=B\" is not an environment variable name (empty, or has '=' or NUL)",
            "c.toml:7:11: workdir /srv/no/such/dir is not a directory",
            "c.toml:9:8: pipeline \"p\" has two phases named \"a\"",
            "c.toml:12:19: backoff_initial (2s) must not be longer than backoff_max (1s)",
            "c.toml:14:11: must be longer than zero",
            "c.toml:15:15: must be at least 1",
            "c.toml:16:16: must be at least 1",
            "c.toml:20:11: must be longer than zero",
        ]
    );
}

#[test]
fn the_backoff_check_waits_for_a_valid_backoff_max() {
    // backoff_max is refused for its own error; comparing the initial
    // delay with the default instead would report a second, false error.
    let text = "[pipelines.p]\nbackoff_initial = \"10m\"\nbackoff_max = \"forever\"\n[[pipelines.p.phases]]\nname = \"a\"\ncommand = [\"x\"]\n";
    let lines = errors(text);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("c.toml:3:15: invalid duration \"forever\""),
        "{lines:?}"
    );
}

#[test]
fn columns_count_characters() {
    // "é" is two bytes; the column of the second value counts it as one.
    let lines = errors("retention = { stale_after = \"é\", interval = \"0s\" }\n");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("c.toml:1:29: invalid duration \"é\""),
        "{lines:?}"
    );
    assert_eq!(lines[1], "c.toml:1:45: must be longer than zero");
}

#[test]
fn checks_across_values_still_run_next_to_other_errors() {
    // A phase timeout refused, a phase without its command: the pipeline's
    // backoff and its phase names are still checked, and so is the
    // incomplete phase's env.
    let text = "[pipelines.p]\nbackoff_initial = \"10m\"\n[[pipelines.p.phases]]\nname = \"a\"\ncommand = [\"x\"]\ntimeout = \"0s\"\n[[pipelines.p.phases]]\nname = \"a\"\nenv = { JOBQUEUE_JOB_ID = \"1\" }\n[store]\nsqlite = \"a.db\"\nlease = \"0s\"\npostgres = \"postgres://h/db\"\n";
    assert_eq!(
        errors(text),
        [
            "c.toml:2:19: backoff_initial (10m) must not be longer than backoff_max (5m), its default",
            "c.toml:6:11: must be longer than zero",
            "c.toml:7:1: missing field `command`",
            "c.toml:8:8: pipeline \"p\" has two phases named \"a\"",
            "c.toml:9:9: JOBQUEUE_JOB_ID is set by the server for every phase; `env` cannot set it",
            "c.toml:10:1: [store] takes one of `sqlite` and `postgres`, not both",
            "c.toml:12:9: must be longer than zero",
        ]
    );
}

#[test]
fn schedules_read_with_their_pipeline_input_and_priority() {
    let text = format!(
        "{PIPELINE}[[schedules]]\nname = \"nightly\"\npipeline = \"build\"\ncron = \"0 3 * * *\"\ninput = {{ ref = \"main\", full = true }}\npriority = 5\n\n[[schedules]]\nname = \"poll\"\npipeline = \"build\"\nevery = \"5m\"\n"
    );
    let config = parse(&text, Path::new("/srv"));
    let names: Vec<(&str, &str)> = config
        .schedules
        .iter()
        .map(|s| (s.name(), s.pipeline()))
        .collect();
    assert_eq!(names, [("nightly", "build"), ("poll", "build")]);
    assert_eq!(config.schedules[0].describe(), "cron \"0 3 * * *\"");
    assert_eq!(config.schedules[1].describe(), "every 300s");
    let at = time::macros::datetime!(2026-01-01 10:02 UTC);
    assert_eq!(
        config.schedules[1].next_after(at),
        Some(time::macros::datetime!(2026-01-01 10:05 UTC))
    );
}

#[test]
fn bad_schedules_have_their_place() {
    let text = format!(
        "{PIPELINE}[[schedules]]\nname = \"a\"\npipeline = \"build\"\ncron = \"61 * * * *\"\n[[schedules]]\nname = \"b\"\npipeline = \"nope\"\nevery = \"1m\"\n[[schedules]]\nname = \"a\"\npipeline = \"build\"\nevery = \"1m\"\ncron = \"* * * * *\"\n[[schedules]]\nname = \"c\"\npipeline = \"build\"\nevry = \"1m\"\n"
    );
    let lines = errors(&text);
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(
        lines[0].starts_with("c.toml:8:8: bad cron expression \"61 * * * *\""),
        "{lines:#?}"
    );
    assert_eq!(lines[1], "c.toml:11:12: unknown pipeline \"nope\"");
    assert_eq!(
        lines[2],
        "c.toml:13:1: a schedule takes one of `cron` and `every`, not both"
    );
    assert_eq!(lines[3], "c.toml:14:8: schedule \"a\" is declared twice");
    assert!(
        lines[4].starts_with("c.toml:21:1: unknown field `evry`, expected one of `name`, `pipeline`, `cron`, `every`, `input`, `priority`"),
        "{lines:#?}"
    );
}
