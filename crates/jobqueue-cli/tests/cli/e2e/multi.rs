//! Three `jobqueue serve --postgres` processes on one database: the
//! many-process contract end to end, over real HTTP.
//!
//! Jobs of a three-phase pipeline of `sh -c` commands are enqueued through
//! all three servers (in batches, round robin). Every phase command appends
//! `JOB PHASE` to one log file. Part way through, one server is killed with
//! SIGKILL; its jobs are rescued by the others once their lease (5 s here)
//! expires. Then:
//!
//! - every job completed, once (one `job.completed` each);
//! - every phase completed once (one `job.phase.completed` per job and
//!   phase), and no phase started again after it completed;
//! - a phase ran twice (by the log) only in a job that was interrupted,
//!   which only the killed server's jobs were;
//! - an SSE subscriber on a survivor, following `/events` from the start,
//!   saw exactly the events the database holds, every one in sequence
//!   order, with no gap: the same list a fresh replay from another survivor
//!   gives at the end.
//!
//! The test has a database of its own (created and dropped), so it runs in
//! parallel with the rest.
//!
//! Size: `JOBQUEUE_MULTI_JOBS` sets the number of jobs; the default,
//! [`DEFAULT_JOBS`], keeps the test near a minute in a debug build on two
//! cores. Every phase is a real command (the supervisor and `sh`), and a
//! debug build here starts about 60 of them a second on one machine
//! however many servers share it, so 10,000 jobs (30,000 commands) take
//! several minutes in a debug build: run them with
//! `JOBQUEUE_MULTI_JOBS=10000` and `--release` (about two minutes here;
//! the last run is in `docs/postgres.md`).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Event, Server, phase};

/// The variable that names the test database (as for the store's tests).
const URL_VAR: &str = "JOBQUEUE_TEST_POSTGRES_URL";

/// The number of jobs unless `JOBQUEUE_MULTI_JOBS` says otherwise.
const DEFAULT_JOBS: usize = 600;

/// How long a run of `n` jobs may take before the test fails: four
/// minutes, or 60 ms a job for larger runs (three commands a job, started
/// at about 60 a second in a debug build).
fn run_deadline(n: usize) -> Duration {
    let per_job = Duration::from_millis(60).saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
    per_job.max(Duration::from_secs(240))
}

/// A database of its own, dropped when the test ends (also on a failure).
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    /// Creates one, or says loudly that it skips (fails under `CI`) without
    /// a test database.
    async fn create() -> Option<Self> {
        let admin_url = match std::env::var(URL_VAR) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{URL_VAR} is not set, and CI is: the multi-process test must run in CI"
                );
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** jobqueue-cli: {URL_VAR} is not set: SKIPPING the multi-process \
                     PostgreSQL test ***\n"
                );
                return None;
            }
        };
        let name = format!("jq_multi_{}", uuid::Uuid::now_v7().simple());
        let client = connect(&admin_url).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        // The URL's path is the database: replace it.
        let base = admin_url.split('?').next().unwrap_or(&admin_url);
        let (server, _) = base.rsplit_once('/').expect("a URL with a database");
        let url = format!("{server}/{name}");
        Some(Self {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // A runtime of its own: this may run while the test's is unwinding.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = connect(&url).await;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(std::io::stderr(), "could not drop database {}", self.name);
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// The config of every server: the shared database, a short lease, and a
/// pipeline of three phases that log their runs.
fn config(url: &str) -> String {
    let log = "echo \"$JOBQUEUE_JOB_ID $JOBQUEUE_PHASE\" >> runs";
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\nconcurrency = 48\nshutdown_timeout = \"2s\"\n\
         [store]\npostgres = {url:?}\nlease = \"5s\"\n\
         [pipelines.three]\nmax_attempts = 10\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n"
    );
    for p in ["a", "b", "c"] {
        text.push_str(&phase("three", p, log));
    }
    text
}

async fn serve(config: &Path, dir: &Path) -> Server {
    Server::spawn(&["serve", "--config", config.to_str().unwrap()], dir).await
}

/// Enqueues `n` jobs through `servers` in turn, in batches; returns their ids.
async fn enqueue(servers: &[&Server], n: usize) -> Vec<String> {
    const BATCH: usize = 250;
    let mut ids = Vec::with_capacity(n);
    let mut turn = 0;
    while ids.len() < n {
        let count = BATCH.min(n - ids.len());
        let jobs: Vec<Value> = (0..count).map(|_| json!({"pipeline": "three"})).collect();
        let server = servers[turn % servers.len()];
        turn += 1;
        let reply = server.post("/jobs/batch", &json!({"jobs": jobs})).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        for job in reply.json()["jobs"].as_array().unwrap() {
            ids.push(job["id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

/// Every event of the stream, up to the `completed`-th `job.completed`.
async fn follow(server: &Server, completed: usize, on_progress: impl Fn(usize)) -> Vec<Event> {
    let mut sse = server.sse("/events?after=0", &[]).await;
    let mut all = Vec::new();
    let mut done = 0;
    while done < completed {
        let e = sse.next().await;
        if e.kind == "job.completed" {
            done += 1;
            on_progress(done);
        }
        all.push(e);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_share_one_postgres_queue_and_survive_a_kill() {
    let Some(db) = Database::create().await else {
        return;
    };
    let n: usize = std::env::var("JOBQUEUE_MULTI_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_JOBS);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.toml");
    std::fs::write(&file, config(&db.url)).unwrap();
    let check = super::jobqueue(&["check-config", file.to_str().unwrap()], &[]).await;
    assert!(check.status.success(), "{}", super::text_of(&check.stderr));
    // The first server migrates the database; the others find it migrated.
    let one = serve(&file, dir.path()).await;
    let two = serve(&file, dir.path()).await;
    let three = serve(&file, dir.path()).await;

    // The subscriber follows `/events` on a server that survives, from the
    // start, while the jobs run; it tells when a third of them completed.
    let (third_tx, third_rx) = tokio::sync::oneshot::channel::<()>();
    let third_tx = std::sync::Mutex::new(Some(third_tx));
    let watch = async {
        tokio::time::timeout(
            run_deadline(n),
            follow(&one, n, |done| {
                if done == n / 3
                    && let Some(tx) = third_tx.lock().unwrap().take()
                {
                    let _ = tx.send(());
                }
            }),
        )
        .await
        .expect("every job completes before the deadline")
    };
    let drive = async {
        let ids = enqueue(&[&one, &two, &three], n).await;
        eprintln!("enqueued {n} jobs in {:?}", started.elapsed());
        // A third done: kill one server with SIGKILL, mid-run.
        let _ = third_rx.await;
        eprintln!(
            "a third done after {:?}: killing a server",
            started.elapsed()
        );
        three.crash().await;
        ids
    };
    let (live, ids) = tokio::join!(watch, drive);
    eprintln!("all {n} completed after {:?}", started.elapsed());

    // The subscriber saw exactly what the database holds, in order: the
    // same list as a fresh replay from the other survivor, up to as far.
    let last = live.last().unwrap().seq;
    let mut replay = two.sse("/events?after=0", &[]).await;
    let mut stored = Vec::with_capacity(live.len());
    while stored.last().is_none_or(|e: &Event| e.seq < last) {
        stored.push(replay.next().await);
    }
    let live_seqs: Vec<u64> = live.iter().map(|e| e.seq).collect();
    let stored_seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert!(
        live_seqs.windows(2).all(|w| w[0] < w[1]),
        "in sequence order"
    );
    assert_eq!(
        live_seqs, stored_seqs,
        "the live stream has every stored event, no gap, no duplicate"
    );

    // Every job completed once; every phase completed once and never
    // started again after it completed.
    let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut completed: HashMap<&str, usize> = HashMap::new();
    let mut phase_done: HashMap<(&str, &str), usize> = HashMap::new();
    let mut interrupted: HashSet<&str> = HashSet::new();
    for e in &live {
        let job = e.job();
        match e.kind.as_str() {
            "job.completed" => *completed.entry(job).or_default() += 1,
            "job.interrupted" => {
                interrupted.insert(job);
            }
            "job.phase.completed" => {
                let phase = e.data["data"]["phase"].as_str().unwrap();
                *phase_done.entry((job, phase)).or_default() += 1;
            }
            "job.phase.started" => {
                let phase = e.data["data"]["phase"].as_str().unwrap();
                assert!(
                    !phase_done.contains_key(&(job, phase)),
                    "phase {phase} of {job} started again after it completed"
                );
            }
            _ => {}
        }
    }
    assert_eq!(completed.len(), n, "every job completed");
    assert!(completed.values().all(|&c| c == 1), "each once");
    assert!(completed.keys().all(|j| ids.contains(j)));
    assert_eq!(phase_done.len(), 3 * n);
    assert!(phase_done.values().all(|&c| c == 1), "each phase once");
    assert!(
        !interrupted.is_empty(),
        "the killed server had jobs running, rescued by the others"
    );

    // By the commands' own log: each phase ran once, except (at most once
    // more) a phase the kill cut short, in an interrupted job.
    let log = std::fs::read_to_string(dir.path().join("runs")).unwrap();
    let mut runs: HashMap<(&str, &str), usize> = HashMap::new();
    for line in log.lines() {
        let (job, phase) = line.split_once(' ').unwrap();
        *runs.entry((job, phase)).or_default() += 1;
    }
    assert_eq!(runs.len(), 3 * n, "every phase ran");
    for ((job, phase), count) in runs {
        assert!(
            count == 1 || (count == 2 && interrupted.contains(job)),
            "phase {phase} of {job} ran {count} times"
        );
    }
    eprintln!(
        "{} jobs interrupted by the kill and rescued; checked after {:?}",
        interrupted.len(),
        started.elapsed()
    );
    drop((one, two));
    drop(db);
}
