//! Waiting for jobs and counting them: [`JobQueue::wait`],
//! [`JobQueue::drain`] and [`JobQueue::counts`].

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use jobqueue_core::{
    EventFilter, EventType, Job, JobCount, JobFilter, JobId, JobStatus, StoreError,
};

use crate::error::Error;
use crate::queue::JobQueue;

/// How many jobs there are, by pipeline and status; see [`JobQueue::counts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobCounts {
    /// One line per (pipeline, status) pair that has any jobs.
    pub lines: Vec<JobCount>,
}

impl JobCounts {
    /// Jobs in `status`, of every pipeline.
    pub fn status(&self, status: JobStatus) -> u64 {
        self.lines
            .iter()
            .filter(|c| c.status == status)
            .map(|c| c.count)
            .sum()
    }

    /// Jobs of `pipeline` in `status`.
    pub fn of(&self, pipeline: &str, status: JobStatus) -> u64 {
        self.lines
            .iter()
            .filter(|c| c.status == status && c.pipeline == pipeline)
            .map(|c| c.count)
            .sum()
    }

    /// Jobs of `pipeline`, in any status.
    pub fn pipeline(&self, pipeline: &str) -> u64 {
        self.lines
            .iter()
            .filter(|c| c.pipeline == pipeline)
            .map(|c| c.count)
            .sum()
    }

    /// Every job.
    pub fn total(&self) -> u64 {
        self.lines.iter().map(|c| c.count).sum()
    }
}

/// What [`JobQueue::drain`] saw: the jobs that ended while it waited, and
/// those left waiting for a later time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainSummary {
    /// Jobs that completed.
    pub completed: usize,
    /// Jobs that failed for good.
    pub failed: usize,
    /// Jobs that were cancelled.
    pub cancelled: usize,
    /// Jobs of this queue's pipelines still queued when it returned, with a
    /// `run_at` in the future (enqueued for later, or waiting out a retry's
    /// backoff).
    pub scheduled: usize,
    /// Jobs of this queue's pipelines still queued when it returned because
    /// their pipeline is paused (see [`JobQueue::pause`]): drain does not
    /// wait for them.
    pub paused: usize,
}

/// The events that end a job (until a user retries it).
fn ending_events() -> Vec<EventType> {
    vec![
        EventType::JobCompleted,
        EventType::JobFailed,
        EventType::JobCancelled,
        EventType::JobDeleted,
    ]
}

impl JobQueue {
    /// Resolves with job `id` once it has finished (completed, failed,
    /// cancelled, or stale), at once if it has already. It waits on the
    /// queue's events, not by polling the store. A job that does not exist,
    /// or is deleted while this waits, is a store error of kind
    /// [`NotFound`](jobqueue_core::ErrorKind::NotFound).
    ///
    /// It waits as long as the job takes: wrap it in a timeout
    /// (`tokio::time::timeout`) where that matters. Once the queue has
    /// shut down it ends with [`Error::ShutDown`] (a job still queued then
    /// runs after the next start). A job that fails and is
    /// retried automatically is not finished yet; this resolves after its
    /// last attempt.
    ///
    /// ```no_run
    /// # async fn demo(queue: jobqueue::JobQueue) -> Result<(), jobqueue::Error> {
    /// let job = queue.enqueue("greet", &serde_json::json!({"name": "Ada"})).await?;
    /// let done = queue.wait(job.id).await?;
    /// assert_eq!(done.status, jobqueue::JobStatus::Completed);
    /// # Ok(()) }
    /// ```
    pub async fn wait(&self, id: JobId) -> Result<Job, Error> {
        // Subscribed before the job is read, so an end committed between the
        // read and the subscription cannot be missed.
        let mut events = self.subscribe(EventFilter {
            job: Some(id),
            types: ending_events(),
        });
        loop {
            let job = match self.get(id).await {
                // A store closed by the shutdown says so in its own words;
                // the waiter hears why.
                Err(_) if self.closing() => return Err(Error::ShutDown),
                read => read?.ok_or(StoreError::JobNotFound(id))?,
            };
            if job.status.is_finished() || job.status == JobStatus::Stale {
                return Ok(job);
            }
            let next = tokio::select! {
                next = events.next() => next,
                () = self.shut_down() => return Err(Error::ShutDown),
            };
            match next {
                Some(Ok(_)) => {}
                Some(Err(_)) if self.closing() => return Err(Error::ShutDown),
                Some(Err(e)) => return Err(e.into()),
                None => return Err(Error::ShutDown),
            }
        }
    }

    /// How many jobs there are, by pipeline and status, counted by the store
    /// without reading the jobs.
    pub async fn counts(&self) -> Result<JobCounts, Error> {
        Ok(JobCounts {
            lines: self.store().counts().await?,
        })
    }

    /// Runs every runnable job of this queue's pipelines to its end, and
    /// returns when none is running or due: for integration tests (like
    /// Oban's `drain_queue`). Jobs enqueued while it runs, and retries that
    /// are due at once, are run too; a job whose `run_at` is in the future
    /// (a retry's backoff, a job enqueued for later) is left queued and
    /// counted in [`DrainSummary::scheduled`]. Give tests a retry policy
    /// without backoff, or a [`ManualClock`](jobqueue_core::ManualClock)
    /// that they move on, to drain retries too.
    ///
    /// The summary counts every job that ended since the queue started or
    /// the previous drain returned, whether it ended before this call or
    /// during it: the queue's pump runs jobs from the moment they are
    /// enqueued, and a test wants to count the jobs it enqueued.
    ///
    /// The pump runs the jobs (with its concurrency, its timeouts, its
    /// retries); this only waits, on the queue's events, with the pump's
    /// poll interval as a fallback for work this process is not told about
    /// (another process's on a shared store). Queued jobs of a pipeline
    /// this queue does not define, or of a paused pipeline (counted in
    /// [`DrainSummary::paused`]), are not waited for; running jobs of a
    /// paused pipeline are.
    ///
    /// ```no_run
    /// # async fn demo(queue: jobqueue::JobQueue) -> Result<(), jobqueue::Error> {
    /// queue.enqueue("greet", &serde_json::json!({"name": "Ada"})).await?;
    /// queue.enqueue("greet", &serde_json::json!({"name": "Grace"})).await?;
    /// let summary = queue.drain().await?;
    /// assert_eq!(summary.completed, 2);
    /// # Ok(()) }
    /// ```
    pub async fn drain(&self) -> Result<DrainSummary, Error> {
        // Subscribed before the first look, so an end committed after the
        // look wakes the loop.
        let mut events = self.subscribe(EventFilter {
            job: None,
            types: ending_events(),
        });
        let poll = self.runtime().config().poll_interval;
        // The pump looks for work at once, whatever it was waiting for.
        self.runtime()
            .notify_enqueued(self.runtime().config().clock.now());
        let waiting = loop {
            let (busy, waiting) = match self.drain_state().await {
                Err(_) if self.closing() => return Err(Error::ShutDown),
                state => state?,
            };
            if !busy {
                break waiting;
            }
            let next = tokio::select! {
                next = tokio::time::timeout(poll, events.next()) => next,
                () = self.shut_down() => return Err(Error::ShutDown),
            };
            match next {
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(Some(Err(_))) if self.closing() => return Err(Error::ShutDown),
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => return Err(Error::ShutDown),
            }
        };
        let mut summary = self.ended_since_last_drain().await?;
        (summary.scheduled, summary.paused) = waiting;
        Ok(summary)
    }

    /// Counts the jobs that ended since the previous drain, from the
    /// stored events, and moves the mark on.
    async fn ended_since_last_drain(&self) -> Result<DrainSummary, Error> {
        let until = self.store().last_seq().await?;
        let mut after = self.drained.load(Ordering::Acquire);
        let mut summary = DrainSummary::default();
        let filter = EventFilter {
            job: None,
            types: ending_events(),
        };
        while after < until {
            let page = self
                .store()
                .events_after(after, filter.clone(), 500)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for event in page.iter().filter(|e| e.seq <= until) {
                match event.event_type() {
                    EventType::JobCompleted => summary.completed += 1,
                    EventType::JobFailed => summary.failed += 1,
                    EventType::JobCancelled => summary.cancelled += 1,
                    _ => {}
                }
            }
        }
        self.drained.fetch_max(until, Ordering::AcqRel);
        Ok(summary)
    }

    /// Whether a job of this queue's pipelines is running or due, and how
    /// many are queued for later.
    /// Whether a job of this queue's pipelines is running or due, and how
    /// many queued ones wait for a later time and for a paused pipeline.
    async fn drain_state(&self) -> Result<(bool, (usize, usize)), Error> {
        let pipelines: HashSet<String> = self.runtime().pipelines().names().into_iter().collect();
        let paused: HashSet<String> = self.store().paused_pipelines().await?.into_iter().collect();
        let counts = self.store().counts().await?;
        let running = counts.iter().any(|c| {
            c.status == JobStatus::Running && pipelines.contains(&c.pipeline) && c.count > 0
        });
        let now = self.runtime().config().clock.now();
        let mut due = false;
        let mut scheduled = 0usize;
        let mut held = 0usize;
        let mut cursor = None;
        loop {
            let page = self
                .store()
                .list(JobFilter {
                    statuses: vec![JobStatus::Queued],
                    pipeline: None,
                    limit: 500,
                    cursor,
                })
                .await?;
            for job in page.jobs.iter().filter(|j| pipelines.contains(&j.pipeline)) {
                if paused.contains(&job.pipeline) {
                    held += 1;
                } else if job.run_at <= now {
                    due = true;
                } else {
                    scheduled += 1;
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok((running || due, (scheduled, held)))
    }
}
