//! The runtime through the façade: phases, retries, cancellation, timeouts,
//! panics, priorities, limits, shutdown and restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use jobqueue::{
    CancelOutcome, EventType, JobResults, JobStatus, NewJob, PhaseError, PhaseStatus, Pipeline,
    phase_fn,
};
use jobqueue_tests::{Counter, Gauge, StoreKind};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::{Env, fast_retry};

/// A phase that counts its runs and returns `{"phase": name}`.
fn counting(name: &'static str, counter: Arc<Counter>) -> impl jobqueue::Phase {
    phase_fn(name, move |_ctx| {
        let counter = counter.clone();
        async move {
            counter.bump();
            Ok::<_, PhaseError>(json!({ "phase": name }))
        }
    })
}

/// A phase that fails (retryable) its first `failures` runs.
fn flaky(name: &'static str, failures: usize, counter: Arc<Counter>) -> impl jobqueue::Phase {
    phase_fn(name, move |_ctx| {
        let counter = counter.clone();
        async move {
            let run = counter.bump();
            if run <= failures {
                Err(PhaseError::retryable(format!("flaky run {run}")))
            } else {
                Ok(json!(run))
            }
        }
    })
}

/// A phase that waits until it is told to stop, then fails.
fn waits_for_stop(name: &'static str, started: Arc<Notify>) -> impl jobqueue::Phase {
    phase_fn(name, move |ctx| {
        let started = started.clone();
        async move {
            started.notify_one();
            ctx.cancelled().await;
            Err::<Value, _>(PhaseError::retryable("stopped"))
        }
    })
}

store_tests! {
    async fn happy_path_with_progress(kind: StoreKind) {
        let env = Env::new(kind);
        let pipeline = Pipeline::new("media")
            .phase(phase_fn("download", |ctx| async move {
                for p in (0..=100).step_by(10) {
                    ctx.report(p, Some(&format!("{p}%")));
                    tokio::task::yield_now().await;
                }
                Ok::<_, PhaseError>(json!({"bytes": 1024, "url": ctx.input()["url"]}))
            }))
            .phase(phase_fn("transcode", |ctx| async move {
                #[derive(serde::Deserialize)]
                struct Download { bytes: u64 }
                let d: Download = ctx.result_of("download")?;
                ctx.report(50, None);
                Ok(json!({"frames": d.bytes / 4}))
            }))
            .phase(phase_fn("upload", |ctx| async move {
                assert_eq!(ctx.results().len(), 2);
                assert_eq!(ctx.index(), 2);
                assert_eq!(ctx.attempt(), 1);
                Ok(json!("s3://bucket/out"))
            }));
        let (queue, rec) = env.start(vec![pipeline]).await;
        let job = queue.enqueue("media", &json!({"url": "https://x/y.mp4"})).await.unwrap();
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.phases.len(), 3, "phases are known from enqueue on");
        rec.wait_for(job.id, EventType::JobCompleted).await;
        let done = queue.get(job.id).await.unwrap().unwrap();
        assert_eq!(done.status, JobStatus::Completed);
        assert_eq!(done.result_of::<Value>("download").unwrap(), Some(json!({"bytes": 1024, "url": "https://x/y.mp4"})));
        assert_eq!(done.result_of::<Value>("transcode").unwrap(), Some(json!({"frames": 256})));
        assert_eq!(done.result_of::<String>("upload").unwrap().as_deref(), Some("s3://bucket/out"));
        assert_eq!(done.phases[0].progress.as_ref().map(|p| p.percent), Some(100), "the last progress is persisted");
        let types = rec.types_of(job.id);
        let progress = types.iter().filter(|t| **t == EventType::PhaseProgress).count();
        assert!((1..11).contains(&progress), "progress is coalesced: {progress} events for 12 reports");
        let transitions: Vec<EventType> = types.into_iter().filter(|t| *t != EventType::PhaseProgress).collect();
        assert_eq!(
            transitions,
            [
                EventType::JobCreated,
                EventType::JobStarted,
                EventType::PhaseStarted,
                EventType::PhaseCompleted,
                EventType::PhaseStarted,
                EventType::PhaseCompleted,
                EventType::PhaseStarted,
                EventType::PhaseCompleted,
                EventType::JobCompleted,
            ]
        );
        queue.shutdown().await;
    }

    async fn retry_resumes_at_failed_phase(kind: StoreKind) {
        let env = Env::new(kind);
        let (a, b, c) = (Arc::new(Counter::default()), Arc::new(Counter::default()), Arc::new(Counter::default()));
        let pipeline = Pipeline::new("p")
            .phase(counting("a", a.clone()))
            .phase(flaky("b", 2, b.clone()))
            .phase(counting("c", c.clone()));
        let (queue, rec) = env.start(vec![pipeline]).await;
        let job = queue.enqueue("p", &json!(null)).await.unwrap();
        rec.wait_for(job.id, EventType::JobCompleted).await;
        assert_eq!((a.get(), b.get(), c.get()), (1, 3, 1), "each completed phase ran exactly once");
        let done = queue.get(job.id).await.unwrap().unwrap();
        assert_eq!(done.attempt, 3);
        assert_eq!(done.phases.iter().map(|p| p.attempts).collect::<Vec<_>>(), [1, 3, 1]);
        assert_eq!(done.result_of::<Value>("a").unwrap(), Some(json!({"phase": "a"})));
        let failed: Vec<_> = rec
            .events()
            .into_iter()
            .filter(|e| e.job_id == Some(job.id) && e.event_type() == EventType::PhaseFailed)
            .collect();
        assert_eq!(failed.len(), 2);
        for e in failed {
            let jobqueue::EventData::PhaseFailed { retry_at, .. } = e.data else { unreachable!() };
            assert!(retry_at.is_some_and(|t| t >= e.at), "a retry is announced with its time");
        }
        queue.shutdown().await;
    }

    async fn manual_retry_resumes_and_keeps_results(kind: StoreKind) {
        let env = Env::new(kind);
        let (a, b, c) = (Arc::new(Counter::default()), Arc::new(Counter::default()), Arc::new(Counter::default()));
        let broken = Arc::new(AtomicBool::new(true));
        let pipeline = Pipeline::new("p").phase(counting("a", a.clone())).phase({
            let (b, broken) = (b.clone(), broken.clone());
            phase_fn("b", move |ctx| {
                let (b, broken) = (b.clone(), broken.clone());
                async move {
                    b.bump();
                    let a: Value = ctx.result_of("a")?;
                    if broken.load(Ordering::SeqCst) {
                        Err(PhaseError::permanent("input is broken"))
                    } else {
                        Ok(json!({"from": a}))
                    }
                }
            })
        }).phase(counting("c", c.clone()));
        let (queue, rec) = env.start(vec![pipeline]).await;
        let job = queue.enqueue("p", &json!(1)).await.unwrap();
        rec.wait_for(job.id, EventType::JobFailed).await;
        assert_eq!((a.get(), b.get(), c.get()), (1, 1, 0));
        broken.store(false, Ordering::SeqCst);
        let retried = queue.retry(job.id).await.unwrap();
        assert_eq!(retried.status, JobStatus::Queued);
        assert_eq!(retried.attempt, 0, "the attempt budget is reset");
        rec.wait_for(job.id, EventType::JobCompleted).await;
        assert_eq!((a.get(), b.get(), c.get()), (1, 2, 1), "a did not run again");
        let done = queue.get(job.id).await.unwrap().unwrap();
        assert_eq!(done.result_of::<Value>("b").unwrap(), Some(json!({"from": {"phase": "a"}})));
        assert!(queue.retry(job.id).await.is_err(), "a completed job cannot be retried");
        queue.shutdown().await;
    }

    async fn permanent_failure_fails_at_once(kind: StoreKind) {
        let env = Env::new(kind);
        let c = Arc::new(Counter::default());
        let pipeline = Pipeline::new("p")
            .phase(phase_fn("a", |_ctx| async { Err::<Value, _>(PhaseError::permanent("no such file")) }))
            .phase(counting("b", c.clone()));
        let (queue, rec) = env.start(vec![pipeline]).await;
        let job = queue.enqueue("p", &json!(null)).await.unwrap();
        rec.wait_for(job.id, EventType::JobFailed).await;
        let failed = queue.get(job.id).await.unwrap().unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        let err = failed.error.unwrap();
        assert_eq!((err.phase.as_deref(), err.message.as_str(), err.attempt), (Some("a"), "no such file", 1));
        assert_eq!(c.get(), 0);
        assert_eq!(failed.attempt, 1, "no automatic retry");
        queue.shutdown().await;
    }

    async fn attempts_exhausted(kind: StoreKind) {
        let env = Env::new(kind);
        let runs = Arc::new(Counter::default());
        let pipeline = Pipeline::new("p").phase(flaky("a", usize::MAX, runs.clone())).retry(fast_retry(3));
        let (queue, rec) = env.start(vec![pipeline]).await;
        let job = queue.enqueue("p", &json!(null)).await.unwrap();
        assert_eq!(job.max_attempts, 3);
        rec.wait_for(job.id, EventType::JobFailed).await;
        assert_eq!(runs.get(), 3);
        let failed = queue.get(job.id).await.unwrap().unwrap();
        assert_eq!((failed.attempt, failed.error.unwrap().message.as_str()), (3, "flaky run 3"));
        let last_failure = rec
            .events()
            .into_iter()
            .rfind(|e| e.job_id == Some(job.id) && e.event_type() == EventType::PhaseFailed)
            .unwrap();
        assert!(matches!(last_failure.data, jobqueue::EventData::PhaseFailed { retry_at: None, .. }));
        queue.shutdown().await;
    }

    async fn cancel_queued_and_running(kind: StoreKind) {
        let env = Env::new(kind);
        let started = Arc::new(Notify::new());
        let never = Arc::new(Counter::default());
        let pipelines = vec![
            Pipeline::new("slow").phase(counting("a", Arc::new(Counter::default()))).phase(waits_for_stop("b", started.clone())),
            Pipeline::new("never").phase(counting("x", never.clone())),
        ];
        let (queue, rec) = env.start_with(pipelines, |b| b.concurrency(1)).await;
        let running = queue.enqueue("slow", &json!(null)).await.unwrap();
        started.notified().await;
        let queued = queue.enqueue("never", &json!(null)).await.unwrap();
        match queue.cancel(queued.id).await.unwrap() {
            CancelOutcome::Cancelled(j) => assert_eq!(j.status, JobStatus::Cancelled),
            other => panic!("queued job is cancelled at once: {other:?}"),
        }
        match queue.cancel(running.id).await.unwrap() {
            CancelOutcome::Requested(j) => assert_eq!(j.status, JobStatus::Running),
            other => panic!("running job is asked to stop: {other:?}"),
        }
        rec.wait_for(running.id, EventType::JobCancelled).await;
        let j = queue.get(running.id).await.unwrap().unwrap();
        assert_eq!(j.status, JobStatus::Cancelled);
        assert_eq!(j.phases[0].status, PhaseStatus::Completed);
        assert_eq!(j.phases[1].status, PhaseStatus::Cancelled);
        assert_eq!(never.get(), 0, "the cancelled queued job never ran");
        assert!(queue.cancel(running.id).await.is_err(), "a finished job cannot be cancelled");
        queue.shutdown().await;
    }

    async fn cancel_running_phase_that_ignores_the_signal(kind: StoreKind) {
        let env = Env::new(kind);
        let started = Arc::new(Notify::new());
        let pipeline = Pipeline::new("p").phase({
            let started = started.clone();
            phase_fn("stubborn", move |_ctx| {
                let started = started.clone();
                async move {
                    started.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<_, PhaseError>(json!(null))
                }
            })
        });
        let (queue, rec) = env.start(vec![pipeline]).await;
        let job = queue.enqueue("p", &json!(null)).await.unwrap();
        started.notified().await;
        queue.cancel(job.id).await.unwrap();
        rec.wait_for(job.id, EventType::JobCancelled).await;
        assert_eq!(queue.get(job.id).await.unwrap().unwrap().status, JobStatus::Cancelled);
        queue.shutdown().await;
    }

    async fn phase_timeout_is_retryable(kind: StoreKind) {
        let env = Env::new(kind);
        let runs = Arc::new(Counter::default());
        let pipeline = Pipeline::new("p")
            .phase_with_timeout(
                {
                    let runs = runs.clone();
                    phase_fn("slow", move |_ctx| {
                        let runs = runs.clone();
                        async move {
                            if runs.bump() == 1 {
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, PhaseError>(json!("fast enough"))
                        }
                    })
                },
                std::time::Duration::from_millis(100),
            );
        let (queue, rec) = env.start(vec![pipeline]).await;
        let job = queue.enqueue("p", &json!(null)).await.unwrap();
        rec.wait_for(job.id, EventType::JobCompleted).await;
        assert_eq!(runs.get(), 2);
        let failure = rec
            .events()
            .into_iter()
            .find(|e| e.job_id == Some(job.id) && e.event_type() == EventType::PhaseFailed)
            .unwrap();
        let jobqueue::EventData::PhaseFailed { error, retry_at, .. } = failure.data else { unreachable!() };
        assert!(error.contains("timed out"), "{error}");
        assert!(retry_at.is_some());
        queue.shutdown().await;
    }

    async fn attempt_timeout_fails_when_exhausted(kind: StoreKind) {
        let env = Env::new(kind);
        let pipeline = Pipeline::new("p")
            .phase(phase_fn("forever", |_ctx| async {
                std::future::pending::<()>().await;
                Ok::<_, PhaseError>(json!(null))
            }))
            .attempt_timeout(std::time::Duration::from_millis(50))
            .retry(fast_retry(2));
        let (queue, rec) = env.start(vec![pipeline]).await;
        let job = queue.enqueue("p", &json!(null)).await.unwrap();
        rec.wait_for(job.id, EventType::JobFailed).await;
        let failed = queue.get(job.id).await.unwrap().unwrap();
        assert_eq!(failed.attempt, 2);
        assert!(failed.error.unwrap().message.contains("attempt timed out"));
        queue.shutdown().await;
    }

    async fn panicking_phase_fails_only_its_job(kind: StoreKind) {
        let env = Env::new(kind);
        let ok = Arc::new(Counter::default());
        let pipelines = vec![
            Pipeline::new("bad")
                .phase(phase_fn("boom", |_ctx| async {
                    if true {
                        panic!("boom");
                    }
                    Ok::<_, PhaseError>(json!(null))
                }))
                .retry(fast_retry(1)),
            Pipeline::new("good").phase(counting("fine", ok.clone())),
        ];
        let (queue, rec) = env.start_with(pipelines, |b| b.concurrency(1)).await;
        let bad = queue.enqueue("bad", &json!(null)).await.unwrap();
        rec.wait_for(bad.id, EventType::JobFailed).await;
        let failed = queue.get(bad.id).await.unwrap().unwrap();
        assert_eq!(failed.error.unwrap().message, "phase panicked: boom");
        assert_eq!(failed.phases[0].status, PhaseStatus::Failed);
        let good = queue.enqueue("good", &json!(null)).await.unwrap();
        rec.wait_for(good.id, EventType::JobCompleted).await;
        assert_eq!(ok.get(), 1, "the worker pool survived the panic");
        queue.shutdown().await;
    }

    async fn priorities_and_run_at(kind: StoreKind) {
        let env = Env::new(kind);
        let release = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let record = {
            let order = order.clone();
            phase_fn("record", move |ctx| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(ctx.job_id());
                    Ok::<_, PhaseError>(json!(null))
                }
            })
        };
        let gate = {
            let (release, started) = (release.clone(), started.clone());
            phase_fn("gate", move |_ctx| {
                let (release, started) = (release.clone(), started.clone());
                async move {
                    started.notify_one();
                    release.notified().await;
                    Ok::<_, PhaseError>(json!(null))
                }
            })
        };
        let pipelines = vec![Pipeline::new("gate").phase(gate), Pipeline::new("rec").phase(record)];
        let (queue, rec) = env.start_with(pipelines, |b| b.concurrency(1)).await;
        let blocker = queue.enqueue("gate", &json!(null)).await.unwrap();
        started.notified().await;
        let soon = env.clock.now() + std::time::Duration::from_millis(300);
        let low = queue.enqueue_job(NewJob::new("rec")).await.unwrap();
        let later = queue.enqueue_job(NewJob::new("rec").priority(100).run_at(soon)).await.unwrap();
        let high = queue.enqueue_job(NewJob::new("rec").priority(10)).await.unwrap();
        let low2 = queue.enqueue_job(NewJob::new("rec")).await.unwrap();
        release.notify_one();
        rec.wait_for(blocker.id, EventType::JobCompleted).await;
        rec.wait_for(later.id, EventType::JobCompleted).await;
        let order = order.lock().unwrap().clone();
        let first_three = &order[..3];
        assert_eq!(first_three, [high.id, low.id, low2.id], "priority first, then age; the future job waits");
        assert_eq!(order[3], later.id);
        let started_at = queue.get(later.id).await.unwrap().unwrap().started_at.unwrap();
        assert!(started_at >= soon, "not before run_at");
        queue.shutdown().await;
    }

    async fn concurrency_limits_hold(kind: StoreKind) {
        let env = Env::new(kind);
        let all = Arc::new(Gauge::default());
        let capped = Arc::new(Gauge::default());
        let work = |name: &'static str, gauges: Vec<Arc<Gauge>>| {
            phase_fn(name, move |_ctx| {
                let gauges = gauges.clone();
                async move {
                    let _guards: Vec<_> = gauges.iter().map(|g| g.enter()).collect();
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    Ok::<_, PhaseError>(json!(null))
                }
            })
        };
        let pipelines = vec![
            Pipeline::new("free").phase(work("w", vec![all.clone()])),
            Pipeline::new("capped").phase(work("w", vec![all.clone(), capped.clone()])).concurrency(1),
        ];
        let (queue, rec) = env.start_with(pipelines, |b| b.concurrency(3)).await;
        let mut jobs = Vec::new();
        for i in 0..12 {
            let p = if i % 3 == 0 { "capped" } else { "free" };
            jobs.push(queue.enqueue(p, &json!(i)).await.unwrap().id);
        }
        for id in &jobs {
            rec.wait_for(*id, EventType::JobCompleted).await;
        }
        assert!(all.peak() <= 3, "global limit exceeded: {}", all.peak());
        assert!(capped.peak() <= 1, "pipeline limit exceeded: {}", capped.peak());
        assert!(queue.runtime().peak_running() <= 3);
        assert!(all.peak() >= 2, "jobs did run concurrently");
        // The store never held more running jobs than the limit either: in
        // commit order, a claim that fills a slot comes after the write that
        // freed it (the runtime frees a slot as soon as a job's last write is
        // handed to a store that commits in order).
        let mut running = 0usize;
        let mut peak = 0usize;
        for event in rec.events() {
            match event.event_type() {
                EventType::JobStarted => running += 1,
                EventType::JobCompleted => running -= 1,
                _ => {}
            }
            peak = peak.max(running);
        }
        assert!(peak <= 3, "the store held {peak} running jobs at once");
        queue.shutdown().await;
    }

    async fn shutdown_interrupts_and_restart_resumes(kind: StoreKind) {
        let env = Env::new(kind);
        let a = Arc::new(Counter::default());
        let started = Arc::new(Notify::new());
        let seen_interrupted = Arc::new(Mutex::new(None));
        let make = |second_life: bool| {
            let (a, started, seen) = (a.clone(), started.clone(), seen_interrupted.clone());
            Pipeline::new("p").phase(counting("a", a)).phase(phase_fn("b", move |ctx| {
                let (started, seen) = (started.clone(), seen.clone());
                async move {
                    ctx.report(42, Some("half"));
                    if second_life {
                        *seen.lock().unwrap() = ctx.interrupted().cloned();
                        return Ok::<_, PhaseError>(json!("resumed"));
                    }
                    started.notify_one();
                    ctx.cancelled().await;
                    Err(PhaseError::retryable("stopped by shutdown"))
                }
            }))
        };
        let (queue, rec) = env.start(vec![make(false)]).await;
        let job = queue.enqueue("p", &json!(null)).await.unwrap();
        started.notified().await;
        rec.wait_for(job.id, EventType::PhaseProgress).await;
        queue.shutdown().await;
        let store = env.store().await;
        let stopped = store.job(job.id).await.unwrap().unwrap();
        store.close().await;
        assert_eq!(stopped.status, JobStatus::Queued, "interrupted jobs go back to the queue");
        let interrupted = stopped.interrupted.clone().expect("interrupted context kept");
        assert_eq!(interrupted.phase, "b");
        assert_eq!(interrupted.progress.as_ref().map(|p| p.percent), Some(42));
        assert_eq!(stopped.phases[0].status, PhaseStatus::Completed);
        assert_eq!(rec.types_of(job.id).last(), Some(&EventType::JobInterrupted));
        drop(queue);

        let (queue, rec) = env.start(vec![make(true)]).await;
        rec.wait_for(job.id, EventType::JobCompleted).await;
        assert_eq!(a.get(), 1, "the completed phase did not run again");
        assert_eq!(seen_interrupted.lock().unwrap().as_ref(), Some(&interrupted), "the phase saw its interrupted context");
        let done = queue.get(job.id).await.unwrap().unwrap();
        assert_eq!(done.result_of::<String>("b").unwrap().as_deref(), Some("resumed"));
        assert_eq!(done.interrupted, Some(interrupted), "kept after the job resumed");
        queue.shutdown().await;
    }

    async fn a_job_of_an_unknown_pipeline_waits_and_is_reported(kind: StoreKind) {
        let env = Env::new(kind);
        let (queue, rec) = env.start(vec![Pipeline::new("known").phase(counting("a", Arc::new(Counter::default())))]).await;
        assert!(matches!(queue.enqueue("nope", &json!(null)).await, Err(jobqueue::Error::UnknownPipeline(_))));
        // A job of a pipeline this process does not define (another process
        // enqueued it, or a deploy renamed the pipeline) is neither run nor
        // failed here: it waits, and the queue says so.
        let job = queue.store().enqueue(NewJob::new("elsewhere").phases(["x"])).await.unwrap();
        queue.runtime().notify_enqueued(job.run_at);
        // A job of a known pipeline enqueued after it still runs.
        let known = queue.enqueue("known", &json!(null)).await.unwrap();
        rec.wait_for(known.id, EventType::JobCompleted).await;
        assert_eq!(queue.get(job.id).await.unwrap().unwrap().status, JobStatus::Queued);
        let stranded = queue.stranded().await.unwrap();
        assert_eq!(stranded.len(), 1);
        assert_eq!((stranded[0].pipeline.as_str(), stranded[0].count), ("elsewhere", 1));
        queue.shutdown().await;
        // A process that defines the pipeline runs it.
        let (queue, rec) = env.start(vec![Pipeline::new("elsewhere").phase(counting("x", Arc::new(Counter::default())))]).await;
        rec.wait_for(job.id, EventType::JobCompleted).await;
        assert!(queue.stranded().await.unwrap().is_empty());
        queue.shutdown().await;
    }

    async fn a_deploy_that_changes_phases_fails_no_queued_job(kind: StoreKind) {
        let env = Env::new(kind);
        let a = Arc::new(Counter::default());
        let started = Arc::new(Notify::new());
        // Version 1: phases a, b; the job is stopped by shutdown in b.
        let (queue, rec) = env
            .start(vec![Pipeline::new("p").phase(counting("a", a.clone())).phase(waits_for_stop("b", started.clone()))])
            .await;
        let job = queue.enqueue("p", &json!(null)).await.unwrap();
        started.notified().await;
        queue.shutdown().await;
        drop(rec);
        // Version 2 renamed b to b2 and added c before it.
        let (b2, c) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
        let (queue, rec) = env
            .start(vec![Pipeline::new("p")
                .phase(counting("a", a.clone()))
                .phase(counting("c", c.clone()))
                .phase(counting("b2", b2.clone()))])
            .await;
        rec.wait_for(job.id, EventType::JobCompleted).await;
        assert_eq!((a.get(), c.get(), b2.get()), (1, 1, 1), "a kept its result, the new phases ran once");
        let done = queue.get(job.id).await.unwrap().unwrap();
        let names: Vec<&str> = done.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "c", "b2"], "b never completed, so it is not kept");
        assert!(done.phases.iter().all(|p| p.status == PhaseStatus::Completed));
        queue.shutdown().await;
    }

    async fn expired_leases_are_rescued_and_fenced(kind: StoreKind) {
        use jobqueue::RecoverScope;
        use jobqueue::core::ClaimRequest;

        let env = Env::new(kind);
        // Another "process" claimed the job and died without a heartbeat.
        let (job, dead) = {
            let store = env.kind.open(env.dir.path(), &env.memory, env.clock.clone()).await;
            let job = store.enqueue(NewJob::new("p").phases(["a"])).await.unwrap();
            let mut req = ClaimRequest::new(1);
            req.lease_for = std::time::Duration::from_secs(1);
            (job, store.claim(req).await.unwrap().remove(0))
        };
        let (queue, rec) = env
            .start_with(vec![Pipeline::new("p").phase(counting("a", Arc::new(Counter::default())))], |b| {
                b.recover(RecoverScope::ExpiredLeases).lease(std::time::Duration::from_secs(1))
            })
            .await;
        assert_eq!(queue.get(job.id).await.unwrap().unwrap().status, JobStatus::Running, "not rescued before expiry");
        rec.wait_for(job.id, EventType::JobInterrupted).await;
        rec.wait_for(job.id, EventType::JobCompleted).await;
        let late = queue.store().phase_started(&dead.lease, 0).await;
        assert!(matches!(late, Err(jobqueue::StoreError::LeaseLost(_))), "the dead worker's token is fenced: {late:?}");
        queue.shutdown().await;
    }
}
