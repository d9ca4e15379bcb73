//! Helpers: queues of command phases, waiting for a job's end or a
//! process's exit with deadlines, reading process ids.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jobqueue::{Event, EventFilter, EventType, Job, JobId, JobQueue, Pipeline, Subscription};
use jobqueue_cli::command::{CommandPhase, Launcher};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

/// How long any wait of a test may take before it fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// The built `jobqueue` binary.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_jobqueue");

/// A launcher that supervises commands with the built binary.
pub(crate) fn launcher() -> Arc<Launcher> {
    Arc::new(Launcher::with_program(BIN))
}

/// A phase that runs `script` with `sh -c`.
pub(crate) fn sh(name: &str, script: &str) -> CommandPhase {
    CommandPhase::new(
        name,
        vec!["sh".into(), "-c".into(), script.into()],
        launcher(),
    )
}

/// A queue on the memory store with `pipelines`, quick to retry.
pub(crate) async fn queue(pipelines: Vec<Pipeline>) -> JobQueue {
    let mut builder = JobQueue::builder().memory().jitter_seed(1);
    for p in pipelines {
        builder = builder.pipeline(p);
    }
    builder.start().await.unwrap()
}

/// A retry policy that retries at once, `attempts` in all.
pub(crate) fn quick_retry(attempts: u32) -> jobqueue::RetryPolicy {
    jobqueue::RetryPolicy {
        max_attempts: attempts,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(10),
        ..Default::default()
    }
}

/// Events of every job, from now.
pub(crate) fn events(queue: &JobQueue) -> Subscription {
    queue.subscribe(EventFilter::default())
}

/// The next event of `job` that `pick` accepts.
pub(crate) async fn next_event(
    events: &mut Subscription,
    job: JobId,
    pick: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let event = events
                .next()
                .await
                .expect("the event stream ended")
                .unwrap();
            if event.job_id == Some(job) && pick(&event) {
                return event;
            }
        }
    })
    .await
    .expect("no such event before the deadline")
}

/// Waits for `job` to finish (completed, failed or cancelled) and returns it.
pub(crate) async fn finished(queue: &JobQueue, events: &mut Subscription, job: JobId) -> Job {
    next_event(events, job, |e| {
        matches!(
            e.event_type(),
            EventType::JobCompleted | EventType::JobFailed | EventType::JobCancelled
        )
    })
    .await;
    queue.get(job).await.unwrap().unwrap()
}

/// Enqueues `input` on `pipeline` and waits for the job to finish.
pub(crate) async fn run(queue: &JobQueue, pipeline: &str, input: serde_json::Value) -> Job {
    let mut events = events(queue);
    let job = queue.enqueue(pipeline, &input).await.unwrap();
    finished(queue, &mut events, job.id).await
}

/// Runs one job of a one-phase pipeline with `attempts` attempts (retried
/// at once) on a fresh queue, and returns it finished.
pub(crate) async fn run_one(phase: CommandPhase, attempts: u32) -> Job {
    let queue = queue(vec![
        Pipeline::new("p").retry(quick_retry(attempts)).phase(phase),
    ])
    .await;
    let job = run(&queue, "p", serde_json::json!({})).await;
    queue.shutdown().await;
    job
}

/// Whether process `pid` runs: `kill(pid, 0)` succeeds and it is not a
/// zombie (an exited process nobody reaped yet).
pub(crate) fn alive(pid: i32) -> bool {
    let Some(p) = Pid::from_raw(pid) else {
        return false;
    };
    if rustix::process::test_kill_process(p).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Field `n` (from 3, the state) of `/proc/PID/stat`.
fn stat_field(pid: i32, n: usize) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(n - 3)
        .unwrap()
        .parse()
        .unwrap()
}

/// The parent of `pid`.
pub(crate) fn ppid_of(pid: i32) -> i32 {
    stat_field(pid, 4)
}

/// The process group of `pid`.
pub(crate) fn pgid_of(pid: i32) -> i32 {
    stat_field(pid, 5)
}

/// Waits until process `pid` has exited (a pidfd becomes readable then),
/// then checks it is gone.
pub(crate) async fn exited(pid: i32) {
    let fd: OwnedFd = match pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return,
        Err(e) => panic!("pidfd_open({pid}): {e}"),
    };
    let ready = tokio::task::spawn_blocking(move || {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let deadline = Timespec {
            tv_sec: DEADLINE.as_secs().try_into().unwrap(),
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&deadline)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(ready, 1, "process {pid} still runs after the deadline");
    assert!(
        !alive(pid),
        "process {pid} exited but still answers kill(pid, 0)"
    );
}

/// The process ids a test command wrote to `file`, one per line.
pub(crate) fn pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// A shell snippet that starts a grandchild (`sleep`), writes its pid and
/// the shell's to `file`, reports progress (so that the test knows the
/// pids are written), and waits.
pub(crate) fn spawn_and_wait(file: &Path) -> String {
    format!(
        "sleep 300 & echo $! > {f}.tmp; echo $$ >> {f}.tmp; mv {f}.tmp {f}; echo '::progress::10 running' >&2; wait",
        f = file.display()
    )
}
