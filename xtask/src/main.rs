//! `cargo xtask`: the maintainer tasks of jobqueue, written in Rust so they run
//! wherever cargo does (the pattern of matklad/cargo-xtask).
//!
//! - `cargo xtask ci`: every check CI runs, in order, stopping at the first failure.
//! - `cargo xtask tidy`: checks of the repository itself (layering, docs, manifests).
//! - `cargo xtask codegen [--check]`: renders generated files; `--check` fails when one is stale.
//! - `cargo xtask bench [store] [--quick]`: the benchmark harness, with its peers.
//!
//! The alias lives in `.cargo/config.toml`; the repository root is found from
//! `CARGO_MANIFEST_DIR`, so the tasks work from any directory.

mod bench;
mod ci;
mod codegen;
mod tidy;
mod util;

use std::process::ExitCode;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  ci                    fmt, clippy, tests, doctests, examples, docs, tidy, codegen --check,
                        bench --quick
  tidy                  repository checks: layering, module docs, manifests, no ignored tests
  codegen [--check]     regenerate generated files; --check fails if any is stale
  bench [--quick] [--rounds N] [--profile NAME]
                        every workload through the façade beside effectum and a plain
                        diesel loop; writes target/bench/summary.{json,md}
  bench store [--quick] [--rounds N] [--profile NAME]
                        the SQLite store alone beside the plain diesel loop
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The chain, without the backtrace `RUST_BACKTRACE` would add to
            // a `Result` returned from `main`: these errors are for users.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => {
            eprint!("{USAGE}");
            bail!("no task given");
        }
    };
    match task {
        "ci" => {
            no_args(task, rest)?;
            ci::run()
        }
        "tidy" => {
            no_args(task, rest)?;
            tidy::run()
        }
        "codegen" => {
            let mode = match rest {
                [] => codegen::Mode::Write,
                [flag] if flag == "--check" => codegen::Mode::Check,
                _ => bail!("usage: cargo xtask codegen [--check]"),
            };
            codegen::run(mode)
        }
        "bench" => bench::run(rest),
        "help" | "-h" | "--help" => {
            eprint!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown task {other:?}")
        }
    }
}

fn no_args(task: &str, rest: &[String]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        bail!("`cargo xtask {task}` takes no arguments, got {rest:?}")
    }
}
