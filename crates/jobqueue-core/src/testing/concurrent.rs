//! Concurrency: what a store guarantees when callers race.
//!
//! - Racing claims hand out every queued job exactly once, each claim with
//!   its own fencing token and the lease its request asked for.
//! - Racing enqueues (single or batched) of one unique key: exactly one
//!   wins, every other is refused with `Duplicate` naming the winner, and
//!   nothing of a refused batch is written.
//! - A cancel request racing the worker's last steps (`phase_completed`,
//!   `complete_job`) or the claim: the job ends exactly one way, and its
//!   events agree with that end (never both `job.completed` and
//!   `job.cancelled`).
//! - Racing manual retries of one failed or cancelled job, and enqueues of
//!   its unique key: exactly one wins; the other retries get `Conflict` (or
//!   `Duplicate` if an enqueue took the key), and one `job.retried` is written.
//!
//! The racing calls are started together and polled together (see
//! [`join_all`]), so a store that works through its own threads receives
//! them at once; each case runs [`ROUNDS`] rounds, in a different order each
//! time, so the calls meet in different groupings. Only outcomes are
//! asserted, never timing. After each case the harness checks, as always,
//! that the published events are the committed ones, gap-free and in order.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{
    BoxFuture, Ctx, assert_kind, claim_one, events_of, job, join_all, snapshot, spec, types_of,
};
use crate::clock::Clock;
use crate::error::{ErrorKind, StoreError};
use crate::id::{JobId, LeaseToken};
use crate::job::Job;
use crate::machine::{EventType, JobStatus, PhaseStatus};
use crate::store::{CancelOutcome, ClaimRequest, Claimed, EventFilter, FailureOutcome};

/// How often each race runs.
const ROUNDS: usize = 4;

/// The events that end a job.
const ENDINGS: [EventType; 3] = [
    EventType::JobCompleted,
    EventType::JobFailed,
    EventType::JobCancelled,
];

/// `items` rotated left by `round`, so each round starts its racers in a
/// different order.
fn rotated<T>(mut items: Vec<T>, round: usize) -> Vec<T> {
    if !items.is_empty() {
        let by = round % items.len();
        items.rotate_left(by);
    }
    items
}

/// The events of job `id` that end it, in order.
async fn endings_of(ctx: &Ctx, id: JobId) -> Vec<EventType> {
    let types = types_of(ctx, id).await;
    types.into_iter().filter(|t| ENDINGS.contains(t)).collect()
}

pub(super) async fn racing_claims(ctx: &Ctx) {
    let s = &ctx.store;
    let now = ctx.clock.now();
    for round in 0..ROUNDS {
        let specs = (0..20).map(|_| spec("p", &["a"])).collect();
        let queued: BTreeSet<JobId> = s
            .enqueue_batch(specs)
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        // Eight claimers ask for 24 jobs in all: two runs of four with the
        // same lease length, which a store may merge into one claim, and
        // two lease lengths, which it must keep apart.
        let requests: Vec<ClaimRequest> = (0..8u64)
            .map(|i| ClaimRequest::new(3).lease_for(Duration::from_secs(30 + 30 * (i / 4))))
            .collect();
        let requests = rotated(requests, round);
        let answers = join_all(requests.iter().map(|r| s.claim(r.clone()))).await;
        let mut claimed = BTreeSet::new();
        let mut tokens = BTreeSet::<LeaseToken>::new();
        for (req, answer) in requests.iter().zip(answers) {
            let answer = answer.unwrap();
            assert!(answer.len() <= req.limit, "a claim takes at most its limit");
            for c in answer {
                assert!(
                    claimed.insert(c.job.id),
                    "job {} handed out twice",
                    c.job.id
                );
                assert!(tokens.insert(c.lease.token), "a fencing token used twice");
                assert_eq!(c.lease.job_id, c.job.id);
                assert_eq!(c.job.status, JobStatus::Running);
                assert_eq!((c.job.attempt, c.lease.attempt), (1, 1));
                assert_eq!(c.job.lease, Some(c.lease.token));
                assert_eq!(
                    c.job.lease_expires_at,
                    Some(now + req.lease_for),
                    "each claim gets the lease it asked for"
                );
                assert_eq!(job(ctx, c.job.id).await, c.job, "the store agrees");
                assert_eq!(
                    types_of(ctx, c.job.id).await,
                    [EventType::JobCreated, EventType::JobStarted],
                    "one job.started per claim"
                );
            }
        }
        assert_eq!(claimed, queued, "every queued job is claimed exactly once");
        assert!(
            s.claim(ClaimRequest::new(10)).await.unwrap().is_empty(),
            "nothing is left to claim"
        );
    }
}

/// What an enqueue racing for a unique key returned: the jobs it wrote, or
/// its error, and whether it was a batch.
struct EnqueueAttempt {
    batch: bool,
    result: Result<Vec<Job>, StoreError>,
}

pub(super) async fn racing_unique_enqueues(ctx: &Ctx) {
    let s = &ctx.store;
    for round in 0..ROUNDS {
        let key = format!("key-{round}");
        let keyed = || spec("p", &["a"]).unique_key(key.clone());
        let (jobs_before, seq_before, _) = snapshot(ctx).await;
        // Single enqueues and batches race for the key; each batch also
        // carries a job without a key, written only if its batch wins.
        let mut racers: Vec<BoxFuture<'_, EnqueueAttempt>> = Vec::new();
        for i in 0..7 {
            if i % 2 == 1 {
                let jobs = vec![spec("p", &["a"]), keyed()];
                racers.push(Box::pin(async move {
                    let result = s.enqueue_batch(jobs).await;
                    EnqueueAttempt {
                        batch: true,
                        result,
                    }
                }));
            } else {
                let job = keyed();
                racers.push(Box::pin(async move {
                    let result = s.enqueue(job).await.map(|j| vec![j]);
                    EnqueueAttempt {
                        batch: false,
                        result,
                    }
                }));
            }
        }
        let attempts = join_all(rotated(racers, round)).await;
        let won: Vec<&Vec<Job>> = attempts
            .iter()
            .filter_map(|a| a.result.as_ref().ok())
            .collect();
        assert_eq!(won.len(), 1, "exactly one enqueue of the key wins");
        let written = won[0];
        let winner = written
            .iter()
            .find(|j| j.unique_key.as_deref() == Some(key.as_str()))
            .expect("the winner holds the key")
            .id;
        for attempt in &attempts {
            let Err(err) = &attempt.result else { continue };
            let duplicate = match (attempt.batch, err) {
                (true, StoreError::Batch { index: 1, error }) => &**error,
                (false, err) => err,
                (true, err) => panic!("a losing batch names its keyed job: {err}"),
            };
            assert!(
                matches!(duplicate, StoreError::Duplicate { key: k, existing } if *k == key && *existing == winner),
                "a loser is refused as a duplicate of the winner: {err}"
            );
        }
        let created = s
            .events_after(seq_before, EventFilter::default(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            created.iter().map(|e| e.job_id).collect::<Vec<_>>(),
            written.iter().map(|j| Some(j.id)).collect::<Vec<_>>(),
            "only the winner's jobs are written, one job.created each"
        );
        for j in written {
            assert_eq!(&job(ctx, j.id).await, j);
        }
        assert_eq!(
            snapshot(ctx).await.0.len(),
            jobs_before.len() + written.len(),
            "nothing of a refused enqueue is written"
        );
    }
}

/// What a worker's last steps ended in, or a cancel request's answer.
enum Step {
    Worker(JobId, Result<Job, StoreError>),
    Cancel(JobId, Result<CancelOutcome, StoreError>),
}

pub(super) async fn cancel_racing_completion(ctx: &Ctx) {
    let s = &ctx.store;
    for round in 0..ROUNDS {
        for _ in 0..4 {
            s.enqueue(spec("p", &["a", "b"])).await.unwrap();
        }
        let claimed = s.claim(ClaimRequest::new(4)).await.unwrap();
        assert_eq!(claimed.len(), 4);
        let mut racers: Vec<BoxFuture<'_, Step>> = Vec::new();
        for (i, c) in claimed.iter().enumerate() {
            let (lease, id) = (c.lease, c.job.id);
            s.phase_started(&lease, 0).await.unwrap();
            s.phase_completed(&lease, 0, 0.into()).await.unwrap();
            s.phase_started(&lease, 1).await.unwrap();
            let whole_tail = i % 2 == 0;
            if !whole_tail {
                s.phase_completed(&lease, 1, 1.into()).await.unwrap();
            }
            // The worker as the runtime runs it: the last phase completes,
            // a heartbeat tells whether a cancel was requested meanwhile,
            // and the job is cancelled or completed; or only the completion
            // is left.
            racers.push(Box::pin(async move {
                let end = async {
                    if whole_tail {
                        s.phase_completed(&lease, 1, 1.into()).await?;
                        if s.heartbeat(&lease, Duration::from_secs(30)).await? {
                            return s.cancel_running(&lease).await;
                        }
                    }
                    s.complete_job(&lease).await
                };
                Step::Worker(id, end.await)
            }));
            racers.push(Box::pin(async move {
                Step::Cancel(id, s.request_cancel(id).await)
            }));
        }
        for step in join_all(rotated(racers, round)).await {
            match step {
                Step::Worker(id, ended) => {
                    let ended = ended.unwrap();
                    let now = job(ctx, id).await;
                    assert_eq!(now, ended, "the store agrees with the worker");
                    let expected = match now.status {
                        JobStatus::Completed => EventType::JobCompleted,
                        JobStatus::Cancelled => EventType::JobCancelled,
                        other => panic!("job {id} ended {other:?}"),
                    };
                    assert_eq!(
                        endings_of(ctx, id).await,
                        [expected],
                        "one ending event, and it is the job's status"
                    );
                    assert_eq!(
                        now.phases[0].status,
                        PhaseStatus::Completed,
                        "a completed phase stays completed"
                    );
                }
                Step::Cancel(id, answer) => {
                    let now = job(ctx, id).await;
                    match answer {
                        Ok(CancelOutcome::Requested(j)) => {
                            assert!(j.cancel_requested && j.status == JobStatus::Running);
                        }
                        Ok(CancelOutcome::Cancelled(j)) => {
                            panic!("a running job is never cancelled at once: {j:?}")
                        }
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
                            assert_eq!(
                                now.status,
                                JobStatus::Completed,
                                "refused only because the job had completed"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A claim's or a cancel request's answer, in a race of the two.
enum ClaimOrCancel {
    Claim(Result<Vec<Claimed>, StoreError>),
    /// Boxed: a job is much larger than a claim's answer.
    Cancel(JobId, Box<Result<CancelOutcome, StoreError>>),
}

pub(super) async fn cancel_racing_claim(ctx: &Ctx) {
    let s = &ctx.store;
    for round in 0..ROUNDS {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(s.enqueue(spec("p", &["a"])).await.unwrap().id);
        }
        let mut racers: Vec<BoxFuture<'_, ClaimOrCancel>> = vec![Box::pin(async {
            ClaimOrCancel::Claim(s.claim(ClaimRequest::new(4)).await)
        })];
        for (i, &id) in ids.iter().enumerate() {
            // Half the requests first read the job, so that with a store
            // that runs writes in groups they may come after the claim.
            let after_a_read = (i + round) % 2 == 1;
            racers.push(Box::pin(async move {
                if after_a_read {
                    s.job(id).await.unwrap();
                }
                ClaimOrCancel::Cancel(id, Box::new(s.request_cancel(id).await))
            }));
        }
        let mut claimed = Vec::new();
        let mut requested = BTreeSet::new();
        for answer in join_all(rotated(racers, round)).await {
            match answer {
                ClaimOrCancel::Claim(c) => claimed = c.unwrap(),
                ClaimOrCancel::Cancel(id, outcome) => match (*outcome).unwrap() {
                    CancelOutcome::Requested(_) => {
                        requested.insert(id);
                    }
                    CancelOutcome::Cancelled(j) => {
                        assert_eq!(j, job(ctx, id).await);
                        assert_eq!(
                            types_of(ctx, id).await,
                            [EventType::JobCreated, EventType::JobCancelled],
                            "cancelled before any claim: never started"
                        );
                    }
                },
            }
        }
        assert_eq!(
            claimed.iter().map(|c| c.job.id).collect::<BTreeSet<_>>(),
            requested,
            "a job was claimed exactly when its cancel request found it running"
        );
        // The worker of each claimed job sees the request and cancels it.
        for c in &claimed {
            assert!(
                s.heartbeat(&c.lease, Duration::from_secs(30))
                    .await
                    .unwrap()
            );
            s.cancel_running(&c.lease).await.unwrap();
            assert_eq!(
                types_of(ctx, c.job.id).await,
                [
                    EventType::JobCreated,
                    EventType::JobStarted,
                    EventType::JobCancelled
                ]
            );
        }
        for id in ids {
            assert_eq!(job(ctx, id).await.status, JobStatus::Cancelled);
        }
    }
}

/// What a racer for a finished job's unique key returned: a manual retry
/// of the job, or an enqueue of a new job with its key.
enum KeyRacer {
    Retry(Result<Job, StoreError>),
    Enqueue(Result<Job, StoreError>),
}

pub(super) async fn racing_retries(ctx: &Ctx) {
    let s = &ctx.store;
    let key = "nightly";
    let j = s
        .enqueue(spec("p", &["a"]).unique_key(key).max_attempts(1))
        .await
        .unwrap();
    let mut expected_retried = 0;
    for round in 0..ROUNDS {
        // Even rounds retry a failed job, odd ones a cancelled job.
        let c = claim_one(ctx).await;
        assert_eq!(c.job.id, j.id);
        if round % 2 == 0 {
            s.phase_started(&c.lease, 0).await.unwrap();
            s.phase_failed(&c.lease, 0, "broken".into(), FailureOutcome::Fail)
                .await
                .unwrap();
        } else {
            s.request_cancel(j.id).await.unwrap();
            s.cancel_running(&c.lease).await.unwrap();
        }
        // Six retries race; from round 2 on, two of them are enqueues of the
        // key instead, one of which starts first in round 2.
        let with_enqueues = round >= 2;
        let mut racers: Vec<BoxFuture<'_, KeyRacer>> = Vec::new();
        for i in 0..6 {
            if with_enqueues && (i == 0 || i == 2) {
                let new = spec("p", &["a"]).unique_key(key);
                racers.push(Box::pin(
                    async move { KeyRacer::Enqueue(s.enqueue(new).await) },
                ));
            } else {
                racers.push(Box::pin(async { KeyRacer::Retry(s.retry(j.id).await) }));
            }
        }
        let answers = join_all(rotated(racers, round)).await;
        let winners: Vec<(&Job, bool)> = answers
            .iter()
            .filter_map(|a| match a {
                KeyRacer::Retry(Ok(job)) => Some((job, true)),
                KeyRacer::Enqueue(Ok(job)) => Some((job, false)),
                _ => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "exactly one racer takes the key");
        let (winner, retry_won) = winners[0];
        assert_eq!(winner.status, JobStatus::Queued);
        for answer in &answers {
            let (is_retry, result) = match answer {
                KeyRacer::Retry(r) => (true, r),
                KeyRacer::Enqueue(r) => (false, r),
            };
            let Err(err) = result else { continue };
            if retry_won && is_retry {
                assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
            } else {
                assert!(
                    matches!(err, StoreError::Duplicate { existing, .. } if *existing == winner.id),
                    "a loser is refused as a duplicate of the winner: {err}"
                );
            }
        }
        if retry_won {
            expected_retried += 1;
            assert_eq!(job(ctx, j.id).await, *winner);
        } else {
            // The new job holds the key; cancel it to free the key, then
            // retry the old job alone so the next round can fail it again.
            assert!(job(ctx, j.id).await.status.is_finished());
            s.request_cancel(winner.id).await.unwrap();
            s.retry(j.id).await.unwrap();
            expected_retried += 1;
        }
        let retried = events_of(ctx, j.id)
            .await
            .iter()
            .filter(|e| e.event_type() == EventType::JobRetried)
            .count();
        assert_eq!(retried, expected_retried, "one job.retried per won retry");
    }
    // With no race, a retry of a queued job is refused as before.
    assert_kind(s.retry(j.id).await, ErrorKind::Conflict);
}
