//! `cargo xtask bench [store|all] [-- ARGS]`: runs the benchmarks.
//!
//! `store` (the default) is the SQLite store's benchmark,
//! `crates/jobqueue-store-sqlite/benches/store.rs`; `all` runs every
//! benchmark of the workspace. Arguments after `--` go to the bench binary.

use anyhow::{Context, Result, bail};

use crate::util::{cargo, exec, project_root};

pub(crate) fn run(args: &[String]) -> Result<()> {
    let (which, extra) = match args.split_first() {
        None => ("store", &[][..]),
        Some((first, rest)) if first == "--" => ("store", rest),
        Some((first, rest)) => match rest.split_first() {
            None => (first.as_str(), &[][..]),
            Some((sep, extra)) if sep == "--" => (first.as_str(), extra),
            Some(_) => bail!("usage: cargo xtask bench [store|all] [-- ARGS]"),
        },
    };
    let mut cmd = cargo();
    match which {
        "store" => {
            let file = project_root().join("crates/jobqueue-store-sqlite/benches/store.rs");
            if !file.exists() {
                bail!(
                    "the store benchmark does not exist yet: expected {} \
                     (a `[[bench]] name = \"store\"` target of jobqueue-store-sqlite)",
                    file.display()
                );
            }
            cmd.args(["bench", "-p", "jobqueue-store-sqlite", "--bench", "store"]);
        }
        "all" => {
            cmd.args(["bench", "--workspace"]);
        }
        other => bail!("unknown benchmark {other:?}; expected `store` or `all`"),
    }
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    exec(&mut cmd).context("benchmark failed")
}
