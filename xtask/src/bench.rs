//! `cargo xtask bench`: the benchmark harness.
//!
//! ```text
//! cargo xtask bench [--quick] [--rounds N] [--profile NAME]   every workload, with the peers
//! cargo xtask bench store [--quick] [--rounds N] [--profile NAME]
//!                                                             the store alone vs the plain loop
//! ```
//!
//! It builds the driver (`crates/jobqueue-bench`) and the effectum peer
//! (`xtask/peers/effectum`, a package of its own outside the workspace; see
//! its `Cargo.toml` for why) with the `release` profile, then runs every
//! workload of [`WORKLOADS`] in a fresh child process on a fresh SQLite file
//! under `target/bench/`, round after round; within a round the systems
//! alternate (jobqueue, jobqueue with `synchronous=FULL`, effectum, the plain
//! loop), so a change in the machine's load touches all of them alike. Each
//! child prints one JSON report (see the driver's docs); the harness adds the
//! load average before and after, and reads the journal mode the file was
//! left in back from its header. It writes `target/bench/summary.json`
//! (medians, ratios, and every round's raw values) and
//! `target/bench/summary.md` (the table, also printed).
//!
//! `--quick` runs about a tenth of the work in one round (`cargo xtask ci`
//! runs it, so the harness keeps working; nothing checks the numbers). `store` is the
//! SQLite store's own comparison: 64 tasks cycling jobs through the store
//! with no runtime, beside the plain diesel loop.
//!
//! `memory_1m_queued` runs in the first round only: peak RSS hardly moves
//! with the machine's load, and draining a million jobs is the longest step
//! of the run.

mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use self::System::{Effectum, Jobqueue, JobqueueFull, Raw, Store};
use crate::util::{cargo, exec, project_root, rel};

/// Who runs a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum System {
    /// jobqueue through its façade, `synchronous=NORMAL` (the default).
    Jobqueue,
    /// jobqueue through its façade, `synchronous=FULL`.
    JobqueueFull,
    /// effectum 0.7, through its own API.
    Effectum,
    /// The plain diesel loop, one transaction per statement.
    Raw,
    /// The SQLite store without the runtime (`cargo xtask bench store`).
    Store,
}

impl System {
    /// The key of its results in `summary.json`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Jobqueue => "jobqueue",
            Self::JobqueueFull => "jobqueue_full",
            Self::Effectum => "effectum",
            Self::Raw => "raw",
            Self::Store => "store",
        }
    }

    /// Its column title, before the durability the run found.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Self::Jobqueue => "jobqueue",
            // The durability after the title tells the two apart.
            Self::JobqueueFull => "jobqueue",
            Self::Effectum => "effectum 0.7",
            Self::Raw => "plain diesel loop",
            Self::Store => "store alone (64 tasks)",
        }
    }

    /// The `synchronous` setting it runs with.
    fn synchronous(self) -> &'static str {
        match self {
            Self::JobqueueFull => "full",
            _ => "normal",
        }
    }
}

/// How much work a workload does in a full run and in a quick one.
#[derive(Debug, Clone, Copy)]
struct Size {
    /// `--jobs`.
    jobs: usize,
    /// `--samples` (latency workloads).
    samples: usize,
}

/// One workload and the systems that run it, in the order they alternate.
#[derive(Debug)]
pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) systems: &'static [System],
    full: Size,
    quick: Size,
}

const fn size(jobs: usize, samples: usize) -> Size {
    Size { jobs, samples }
}

/// Every workload of `cargo xtask bench`, in the order a round runs them.
/// Effectum syncs every commit (see its peer's docs), so the workloads that
/// commit once per job (`enqueue_single`, the latency probes) are kept small
/// enough for it to finish in seconds.
pub(crate) const WORKLOADS: &[Workload] = &[
    Workload {
        name: "noop_1phase",
        systems: &[Jobqueue, JobqueueFull, Effectum],
        full: size(100_000, 0),
        quick: size(10_000, 0),
    },
    Workload {
        name: "noop_3phase",
        systems: &[Jobqueue, JobqueueFull, Effectum],
        full: size(30_000, 0),
        quick: size(3_000, 0),
    },
    Workload {
        name: "raw_lifecycle",
        systems: &[Raw],
        full: size(30_000, 0),
        quick: size(3_000, 0),
    },
    Workload {
        name: "enqueue_single",
        systems: &[Jobqueue, JobqueueFull, Effectum],
        full: size(2_000, 0),
        quick: size(200, 0),
    },
    Workload {
        name: "enqueue_concurrent",
        systems: &[Jobqueue, JobqueueFull, Effectum],
        full: size(TASKS * 500, 0),
        quick: size(TASKS * 50, 0),
    },
    Workload {
        name: "latency_idle",
        systems: &[Jobqueue, JobqueueFull, Effectum],
        full: size(0, 500),
        quick: size(0, 50),
    },
    Workload {
        name: "latency_loaded",
        systems: &[Jobqueue],
        full: size(100_000, 500),
        quick: size(10_000, 50),
    },
    Workload {
        name: MEMORY,
        systems: &[Jobqueue],
        full: size(1_000_000, 0),
        quick: size(100_000, 0),
    },
];

/// The workloads of `cargo xtask bench store`.
const STORE_WORKLOADS: &[Workload] = &[
    Workload {
        name: "store_lifecycle",
        systems: &[Store],
        full: size(TASKS * 312, 0),
        quick: size(TASKS * 31, 0),
    },
    Workload {
        name: "raw_lifecycle",
        systems: &[Raw],
        full: size(TASKS * 312, 0),
        quick: size(TASKS * 31, 0),
    },
];

/// The workload that is two processes on one file: `memory_enqueue`, then
/// `memory_drain`.
pub(crate) const MEMORY: &str = "memory_1m_queued";

/// Concurrency of the queue, and tasks of the concurrent workloads.
const TASKS: usize = 64;
/// Jobs per `enqueue_batch`.
const BATCH: usize = 1_000;
/// A child that runs longer than this is killed and the run fails, so a
/// hang cannot eat CI's time.
const CHILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// What the command line asked for.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) store_only: bool,
    pub(crate) quick: bool,
    pub(crate) rounds: usize,
    pub(crate) profile: String,
    /// `--postgres`: the PostgreSQL runs only, on this database.
    pub(crate) postgres: Option<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    const USAGE: &str = "usage: cargo xtask bench [store] [--quick] [--rounds N] [--profile NAME] \
                         [--postgres [URL]] (URL default: $JOBQUEUE_TEST_POSTGRES_URL)";
    let mut options = Options {
        store_only: false,
        quick: false,
        rounds: 0,
        profile: "release".into(),
        postgres: None,
    };
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "store" => options.store_only = true,
            "--quick" => options.quick = true,
            "--rounds" => {
                options.rounds = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .context(USAGE)?;
            }
            "--profile" => options.profile = it.next().context(USAGE)?.clone(),
            "--postgres" => {
                let url = match it.next_if(|a| a.contains("://")) {
                    Some(url) => url.clone(),
                    None => std::env::var("JOBQUEUE_TEST_POSTGRES_URL")
                        .ok()
                        .filter(|u| !u.trim().is_empty())
                        .context("--postgres needs a URL or JOBQUEUE_TEST_POSTGRES_URL")?,
                };
                options.postgres = Some(url);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if options.rounds == 0 {
        // A quick run shows that everything works; rounds are for numbers.
        options.rounds = if options.quick { 1 } else { 3 };
    }
    Ok(options)
}

/// One child's report with what the harness saw around it.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) system: System,
    pub(crate) workload: &'static str,
    pub(crate) round: usize,
    /// The child's JSON report.
    pub(crate) report: Value,
    /// 1-minute load average before and after the child ran.
    pub(crate) load: (f64, f64),
    /// The journal the file was left in, from its header.
    pub(crate) journal: &'static str,
}

/// The built binaries.
struct Binaries {
    driver: PathBuf,
    effectum: Option<PathBuf>,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    if let Some(url) = &options.postgres {
        return postgres(&options, url);
    }
    let workloads = if options.store_only {
        STORE_WORKLOADS
    } else {
        WORKLOADS
    };
    let needs_effectum = workloads.iter().any(|w| w.systems.contains(&Effectum));
    let bins = build(&options.profile, needs_effectum)?;
    let dir = project_root().join("target/bench");
    let files = dir.join("files");
    // Files of an earlier run that stopped half way are of no use.
    if files.exists() {
        std::fs::remove_dir_all(&files)
            .with_context(|| format!("could not clear {}", files.display()))?;
    }
    std::fs::create_dir_all(&files)
        .with_context(|| format!("could not create {}", files.display()))?;

    let started = Instant::now();
    let mut runs = Vec::new();
    for round in 1..=options.rounds {
        for workload in workloads {
            if workload.name == MEMORY && round > 1 {
                continue;
            }
            for &system in workload.systems {
                let size = if options.quick {
                    workload.quick
                } else {
                    workload.full
                };
                let db = files.join(format!("{}-{}-{round}.db", system.key(), workload.name));
                let new = if workload.name == MEMORY {
                    memory(&bins, system, round, size, &db)?
                } else {
                    vec![one(&bins, system, workload.name, round, size, &db)?]
                };
                for r in &new {
                    eprintln!("{}", report::progress_line(r));
                }
                runs.extend(new);
                remove_db(&db)?;
            }
        }
    }
    eprintln!(
        "bench: {} runs in {:.0} s",
        runs.len(),
        started.elapsed().as_secs_f64()
    );
    let name = if options.store_only {
        "store"
    } else {
        "summary"
    };
    let summary = report::summary(&options, workloads, &runs);
    let markdown = report::markdown(&options, workloads, &runs, &summary);
    let json_path = dir.join(format!("{name}.json"));
    let md_path = dir.join(format!("{name}.md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    std::fs::write(&md_path, &markdown)
        .with_context(|| format!("could not write {}", md_path.display()))?;
    eprintln!("\n{markdown}");
    eprintln!("bench: wrote {} and {}", rel(&json_path), rel(&md_path));
    Ok(())
}

/// `--postgres`: `noop_1phase` on PostgreSQL through one process and
/// through three sharing the queue (the driver's `pg_noop_1phase`, which
/// starts the other nodes itself), each round; writes
/// `target/bench/postgres.json` and prints a table.
fn postgres(options: &Options, url: &str) -> Result<()> {
    let bins = build(&options.profile, false)?;
    let dir = project_root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let jobs = if options.quick { 1_000 } else { 10_000 };
    let mut runs = Vec::new();
    for round in 1..=options.rounds {
        for nodes in [1, 3] {
            let mut cmd = Command::new(&bins.driver);
            cmd.args(["pg_noop_1phase", "--db", "-", "--postgres", url])
                .args(["--nodes", &nodes.to_string()])
                .args(["--jobs", &jobs.to_string()])
                .args(["--batch", &BATCH.to_string()])
                .args(["--concurrency", &TASKS.to_string()]);
            let out = dir.join(format!("postgres-{nodes}-{round}.out"));
            let report = child(&mut cmd, &out)?;
            let rate = report["jobs_per_second"].as_f64().unwrap_or(0.0);
            eprintln!(
                "bench: postgres noop_1phase, {nodes} process(es), round {round}: {rate:.0} jobs/s"
            );
            runs.push(report);
        }
    }
    let median = |nodes: u64| -> f64 {
        let mut rates: Vec<f64> = runs
            .iter()
            .filter(|r| r["nodes"].as_u64() == Some(nodes))
            .filter_map(|r| r["jobs_per_second"].as_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied().unwrap_or(0.0)
    };
    let (one, three) = (median(1), median(3));
    let summary = serde_json::json!({
        "workload": "noop_1phase",
        "store": "postgres",
        "jobs": jobs,
        "rounds": options.rounds,
        "jobs_per_second": {"1_process": one, "3_processes": three},
        "runs": runs,
    });
    let path = dir.join("postgres.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("could not write {}", path.display()))?;
    eprintln!(
        "\n| noop_1phase on PostgreSQL | jobs/s (median of {}) |\n|---|---|\n| 1 process | {one:.0} |\n| 3 processes | {three:.0} |\n",
        options.rounds
    );
    eprintln!("bench: wrote {}", rel(&path));
    Ok(())
}

/// Builds the driver, and the effectum peer when asked, with `profile`.
fn build(profile: &str, effectum: bool) -> Result<Binaries> {
    let root = project_root();
    let target = root.join("target");
    let out = target.join(match profile {
        "dev" | "test" => "debug",
        "release" | "bench" => "release",
        other => other,
    });
    let t = Instant::now();
    exec(cargo().args(["build", "--profile", profile, "-p", "jobqueue-bench"]))?;
    eprintln!("bench: built the driver in {:.1?}", t.elapsed());
    let effectum = if effectum {
        let t = Instant::now();
        let manifest = root.join("xtask/peers/effectum/Cargo.toml");
        // Its own lock file pins effectum and its dependencies; the shared
        // target directory lets the two builds share what they can.
        exec(
            cargo()
                .args(["build", "--locked", "--profile", profile])
                .args([
                    "--manifest-path".as_ref(),
                    manifest.as_os_str(),
                    "--target-dir".as_ref(),
                    target.as_os_str(),
                ]),
        )?;
        eprintln!("bench: built the effectum peer in {:.1?}", t.elapsed());
        Some(out.join("effectum-peer"))
    } else {
        None
    };
    Ok(Binaries {
        driver: out.join("jobqueue-bench"),
        effectum,
    })
}

/// Runs one workload of one system in a child process.
fn one(
    bins: &Binaries,
    system: System,
    workload: &'static str,
    round: usize,
    size: Size,
    db: &Path,
) -> Result<Run> {
    let bin = match system {
        Effectum => bins
            .effectum
            .as_deref()
            .context("the effectum peer was not built")?,
        _ => &bins.driver,
    };
    let mut cmd = Command::new(bin);
    cmd.arg(workload)
        .arg("--db")
        .arg(db)
        .args(["--jobs", &size.jobs.to_string()])
        .args(["--samples", &size.samples.to_string()])
        .args(["--batch", &BATCH.to_string()])
        .args(["--concurrency", &TASKS.to_string()])
        .args(["--tasks", &TASKS.to_string()]);
    if system != Effectum {
        cmd.args(["--sync", system.synchronous()]);
    }
    let before = loadavg();
    let report = child(&mut cmd, &db.with_extension(format!("{workload}.out")))?;
    let after = loadavg();
    Ok(Run {
        system,
        workload,
        round,
        report,
        load: (before, after),
        journal: journal(db)?,
    })
}

/// `memory_1m_queued`: one process enqueues, a second one drains the file
/// the first one left. Both runs are reported, as `memory_enqueue` and
/// `memory_drain`.
fn memory(
    bins: &Binaries,
    system: System,
    round: usize,
    size: Size,
    db: &Path,
) -> Result<Vec<Run>> {
    let enqueue = one(bins, system, "memory_enqueue", round, size, db)?;
    let drain = one(bins, system, "memory_drain", round, size, db)?;
    Ok(vec![enqueue, drain])
}

/// Runs `cmd` with its stdout in the file `out_path` (no pipe to fill up),
/// kills it after [`CHILD_TIMEOUT`], and parses the last line it printed.
fn child(cmd: &mut Command, out_path: &Path) -> Result<Value> {
    let out = std::fs::File::create(out_path)
        .with_context(|| format!("could not create {}", out_path.display()))?;
    let shown = format!("{cmd:?}");
    let mut proc = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("could not start {shown}"))?;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = proc.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            // Ignoring errors: it may have ended in between.
            let _ = proc.kill();
            let _ = proc.wait();
            bail!("{shown} ran longer than {CHILD_TIMEOUT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(out_path)
        .with_context(|| format!("could not read {}", out_path.display()))?;
    if !status.success() {
        bail!("{shown} failed ({status}); it printed:\n{text}");
    }
    let line = text
        .lines()
        .last()
        .with_context(|| format!("{shown} printed no report"))?;
    serde_json::from_str(line).with_context(|| format!("{shown} printed no JSON report: {line}"))
}

/// The 1-minute load average.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The journal of the database file, from bytes 18 and 19 of its header
/// (the file format versions: 1 for a rollback journal, 2 for WAL).
fn journal(db: &Path) -> Result<&'static str> {
    use std::io::Read;
    let mut header = [0_u8; 20];
    let mut file =
        std::fs::File::open(db).with_context(|| format!("could not open {}", db.display()))?;
    file.read_exact(&mut header)
        .with_context(|| format!("{} has no SQLite header", db.display()))?;
    Ok(match (header[18], header[19]) {
        (2, 2) => "WAL",
        (1, 1) => "rollback journal",
        _ => "unknown journal",
    })
}

/// Removes a database file with its WAL, shared memory, journal and lock
/// file (the report beside it stays, for a look after the run).
fn remove_db(db: &Path) -> Result<()> {
    let name = db
        .file_name()
        .context("database path without a name")?
        .to_string_lossy()
        .into_owned();
    // `.lock` is the store's lock file beside the database.
    for suffix in ["", "-wal", "-shm", "-journal", ".lock"] {
        let path = db.with_file_name(format!("{name}{suffix}"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("could not remove {}", path.display()));
            }
        }
    }
    Ok(())
}
