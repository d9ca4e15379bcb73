//! The kill test: a child process runs an SQLite queue of multi-phase jobs
//! and is killed with SIGKILL mid-phase, several times; new processes on the
//! same file finish every job, no completed phase runs again, and each
//! interrupted job shows its interrupted context.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use jobqueue::{JobFilter, JobStatus, JobStore, PhaseStatus};
use jobqueue_store_sqlite::{SqliteOptions, SqliteStore};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WORKER: &str = env!("CARGO_BIN_EXE_jobqueue-test-worker");
const JOBS: usize = 12;

fn spawn(db: &Path, log: &Path, args: &[&str]) -> Child {
    Command::new(WORKER)
        .arg(db)
        .arg(log)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn runs(log: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("run")).then(|| {
                (
                    it.next().unwrap_or("").to_owned(),
                    it.next().unwrap_or("").to_owned(),
                )
            })
        })
        .collect()
}

/// Waits until the log holds at least `n` phase runs, then kills the child.
/// Returns the job ids the child acknowledged (printed after `enqueue`
/// returned, so they must be durable).
async fn kill_after_runs(mut child: Child, log: &Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // The child's stdout is read so it never blocks on a full pipe.
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    let mut note = |line: &str| {
        if let Some(id) = line.strip_prefix("enqueued ") {
            acked.push(id.to_owned());
        }
    };
    loop {
        if runs(log).len() >= n {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "child made no progress"
        );
        tokio::select! {
            line = out.next_line() => match line.unwrap() {
                Some(line) => note(&line),
                // Finished everything before the kill point: nothing to kill.
                None => return acked,
            },
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed by SIGKILL");
    while let Some(line) = out.next_line().await.unwrap() {
        note(&line);
    }
    acked
}

/// `(job id, phase)` of every completed phase, as the run log names them.
fn completed_phases(jobs: &[jobqueue::Job]) -> HashSet<(String, String)> {
    jobs.iter()
        .flat_map(|j| {
            j.phases
                .iter()
                .filter(|p| p.status == PhaseStatus::Completed)
                .map(|p| (j.id.to_string(), p.name.clone()))
        })
        .collect()
}

async fn open(db: &Path) -> Arc<dyn JobStore> {
    Arc::new(SqliteStore::open(db, SqliteOptions::default()).unwrap())
}

async fn all_jobs(store: &Arc<dyn JobStore>) -> Vec<jobqueue::Job> {
    store
        .list(JobFilter {
            limit: 1000,
            ..JobFilter::default()
        })
        .await
        .unwrap()
        .jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_and_never_rerun_completed_phases() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let mut interrupted_jobs = HashSet::new();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut log_index = 0;
    let mut next_log = || {
        log_index += 1;
        dir.path().join(format!("runs-{log_index}.log"))
    };

    // Three lives that are killed mid-phase at different moments.
    let mut child_args: Vec<String> = vec!["enqueue".into(), JOBS.to_string()];
    for kill_at in [4, 7, 5] {
        let log = next_log();
        let args: Vec<&str> = child_args.iter().map(String::as_str).collect();
        acknowledged.extend(kill_after_runs(spawn(&db, &log, &args), &log, kill_at).await);
        child_args = vec!["run".into()];

        // The file opens cleanly after the kill; note what was done.
        let store = open(&db).await;
        let jobs = all_jobs(&store).await;
        assert!(jobs.len() <= JOBS);
        let present: HashSet<String> = jobs.iter().map(|j| j.id.to_string()).collect();
        for id in &acknowledged {
            assert!(present.contains(id), "acknowledged job {id} was lost");
        }
        let completed = completed_phases(&jobs);
        interrupted_jobs.extend(
            jobs.iter()
                .filter(|j| j.status == JobStatus::Running)
                .map(|j| j.id),
        );
        store.close().await;

        // The next life must not run any of those phases again.
        let next = next_log();
        let probe = spawn(&db, &next, &["run"]);
        kill_after_runs(probe, &next, 2).await;
        for run in runs(&next) {
            assert!(
                !completed.contains(&run),
                "completed phase {run:?} ran again"
            );
        }
        let store = open(&db).await;
        for j in all_jobs(&store).await {
            interrupted_jobs.extend((j.status == JobStatus::Running).then_some(j.id));
        }
        // One store per file: the next child needs it.
        store.close().await;
    }

    // A last life finishes everything.
    let store_before = open(&db).await;
    let completed_before = completed_phases(&all_jobs(&store_before).await);
    store_before.close().await;
    let log = next_log();
    let mut last = spawn(&db, &log, &["run"]);
    let status = tokio::time::timeout(Duration::from_secs(60), last.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the last life finishes every job");
    for run in runs(&log) {
        assert!(
            !completed_before.contains(&run),
            "completed phase {run:?} ran again"
        );
    }

    let store = open(&db).await;
    let jobs = all_jobs(&store).await;
    assert!(jobs.len() >= acknowledged.len() && !acknowledged.is_empty());
    assert!(
        !interrupted_jobs.is_empty(),
        "the kills cut running jobs short"
    );
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Completed, "job {} finished", j.id);
        assert!(j.phases.iter().all(|p| p.status == PhaseStatus::Completed));
        if interrupted_jobs.contains(&j.id) {
            let ctx = j
                .interrupted
                .as_ref()
                .unwrap_or_else(|| panic!("job {} shows its interrupted context", j.id));
            assert!(
                j.phase(&ctx.phase).is_some(),
                "the context names a phase of the job"
            );
        }
    }
    // Every phase of every job completed exactly once: one result each.
    let total_completed: usize = jobs.iter().map(|j| j.phases.len()).sum();
    assert_eq!(total_completed, jobs.len() * 3);
}

/// A job whose phase kills its process on every run: each life's recovery
/// counts the run it cut short as an attempt, and once the attempts are
/// spent the job fails with a clear error instead of crashing every new
/// process forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_process_every_time_is_not_run_forever() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let log = dir.path().join("runs.log");
    let mut mode = "enqueue-crash";
    let mut lives = 0;
    let status = loop {
        lives += 1;
        assert!(lives <= 5, "the crashing job was run again and again");
        let status =
            tokio::time::timeout(Duration::from_secs(60), spawn(&db, &log, &[mode]).wait())
                .await
                .unwrap()
                .unwrap();
        mode = "run";
        if status.success() {
            break status;
        }
    };
    assert!(status.success());
    // Three attempts, three crashes; the fourth life recovers it as failed.
    assert_eq!(lives, 4);
    let store = open(&db).await;
    let jobs = all_jobs(&store).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.attempt, 3);
    let error = job.error.as_ref().unwrap();
    assert_eq!(error.phase.as_deref(), Some("boom"));
    assert!(error.message.contains("interrupted"), "{}", error.message);
    assert!(
        error.message.contains("attempt 3 of 3"),
        "{}",
        error.message
    );
    store.close().await;
}
