//! `cargo xtask ci`: every check CI runs, in order, stopping at the first
//! failure (fmt, clippy, tests, doctests, the façade's examples run for real,
//! rustdoc, tidy, codegen check, and the benchmark harness in its quick mode,
//! so it keeps working; nothing checks its numbers). `.ci/run` and the README's test command both end here, so a green
//! run on a laptop means a green run in CI.

use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::util::{cargo, exec};
use crate::{bench, codegen, tidy};

/// One named step of the run.
struct Step {
    name: &'static str,
    run: Box<dyn Fn() -> Result<()>>,
}

impl Step {
    fn new(name: &'static str, run: impl Fn() -> Result<()> + 'static) -> Self {
        Self {
            name,
            run: Box::new(run),
        }
    }
}

/// Runs every step; the error names the step that failed.
pub(crate) fn run() -> Result<()> {
    let started = Instant::now();
    let steps = steps();
    let total = steps.len();
    for (i, step) in steps.iter().enumerate() {
        eprintln!("\n==> ci [{}/{total}] {}", i + 1, step.name);
        let t = Instant::now();
        (step.run)().with_context(|| format!("ci failed at step `{}`", step.name))?;
        eprintln!(
            "==> ci [{}/{total}] {} ok ({:.1?})",
            i + 1,
            step.name,
            t.elapsed()
        );
    }
    eprintln!(
        "\n==> ci: all {total} steps passed in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

fn steps() -> Vec<Step> {
    let nextest = has_nextest();
    let mut steps = vec![
        Step::new("fmt", || {
            exec(cargo().args(["fmt", "--all", "--", "--check"]))
        }),
        Step::new("clippy", || {
            exec(
                cargo()
                    .args(["clippy", "--workspace", "--all-targets", "--all-features"])
                    .args(locked())
                    .args(["--", "-D", "warnings"]),
            )
        }),
    ];
    if nextest {
        steps.push(Step::new("test (nextest)", || {
            let mut cmd = cargo();
            cmd.args(["nextest", "run", "--workspace", "--all-features"])
                .args(locked());
            if in_ci() {
                // See .config/nextest.toml.
                cmd.args(["--profile", "ci"]);
            }
            exec(&mut cmd)
        }));
        // nextest does not run doctests.
        steps.push(Step::new("doctest", || {
            exec(
                cargo()
                    .args(["test", "--doc", "--workspace", "--all-features"])
                    .args(locked()),
            )
        }));
    } else {
        steps.push(Step::new(
            "test (cargo test; nextest not installed)",
            || {
                exec(
                    cargo()
                        .args(["test", "--workspace", "--all-features"])
                        .args(locked()),
                )
            },
        ));
    }
    steps.extend([
        Step::new("examples", run_examples),
        Step::new("doc", || {
            exec(
                cargo()
                    .env("RUSTDOCFLAGS", "-D warnings")
                    .args(["doc", "--workspace", "--no-deps", "--all-features"])
                    .args(locked()),
            )
        }),
        Step::new("tidy", tidy::run),
        Step::new("codegen --check", || codegen::run(codegen::Mode::Check)),
        Step::new("bench --quick", || {
            bench::run(&BENCH_ARGS.map(String::from))
        }),
    ]);
    steps
}

/// The arguments of the CI run of the benchmark harness: the quick sizes,
/// built with the `dev` profile. CI checks that the harness, the driver and
/// the effectum peer build and run, not their speed, and the dev build reuses
/// most of what the test steps compiled; release builds of the driver and
/// the peer would add minutes to a run that takes a few (see
/// `docs/performance.md`, section CI).
const BENCH_ARGS: [&str; 3] = ["--quick", "--profile", "dev"];

/// Runs every example of the façade, so the README's library examples and
/// their "Run with" lines keep working, not only compiling (the main
/// command, `jobqueue serve`, is covered by the CLI's end-to-end tests).
fn run_examples() -> Result<()> {
    let dir = crate::util::project_root().join("crates/jobqueue/examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("could not list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".rs")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    for name in names {
        eprintln!("--> example {name}");
        exec(
            cargo()
                .args(["run", "--quiet", "-p", "jobqueue", "--example", &name])
                .args(locked()),
        )?;
    }
    Ok(())
}

/// `cargo nextest` is installed and runs.
fn has_nextest() -> bool {
    let found = cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("note: cargo-nextest not found; falling back to `cargo test`");
    }
    found
}

/// In CI (`CI` set), `Cargo.lock` must already be up to date: a dependency
/// change without its lock file fails here instead of resolving silently.
fn locked() -> &'static [&'static str] {
    if in_ci() { &["--locked"] } else { &[] }
}

/// The `CI` variable is set (and not to `false`), as CI services and `.ci/run` do.
fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}
