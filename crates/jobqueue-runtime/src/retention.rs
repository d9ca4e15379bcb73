//! The retention scheduler: every `interval`, finished jobs older than
//! `stale_after` become `stale`, stale jobs older than `delete_after` are
//! deleted with all their rows, and history older than `prune_after` (ended
//! webhook deliveries, the `job.deleted` events of deleted jobs) is pruned,
//! in small batches. With all three the store stops growing: it holds the
//! jobs of the retention window and nothing older.
//!
//! It only ever asks the store for finished or stale jobs (the store's
//! transition table refuses anything else), so queued and running jobs are
//! never touched. A deleted job's webhook deliveries keep their own payload
//! snapshots, so pending deliveries still complete.

use std::sync::Arc;
use std::time::Duration;

use jobqueue_core::{Clock, JobStore, StoreError, timefmt};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::sub;

/// When finished jobs become stale, when stale jobs are deleted, and when
/// old history is pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Finished (completed, failed, cancelled) this long ago: stale.
    pub stale_after: Duration,
    /// Stale this long: deleted.
    pub delete_after: Duration,
    /// Ended (delivered or failed) webhook deliveries and the `job.deleted`
    /// events of deleted jobs this old are removed.
    pub prune_after: Duration,
    /// How often the scheduler runs.
    pub interval: Duration,
    /// Jobs per transaction; small batches keep the writer responsive.
    pub batch: usize,
}

impl Default for RetentionConfig {
    /// 7 days to stale, 30 days to delete (the server's defaults), 30
    /// days to prune history, every minute, 100 per batch.
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(7 * 86_400),
            delete_after: Duration::from_secs(30 * 86_400),
            prune_after: Duration::from_secs(30 * 86_400),
            interval: Duration::from_secs(60),
            batch: 100,
        }
    }
}

impl RetentionConfig {
    /// Checks the settings where they are built: `interval` longer than
    /// zero (a zero period cannot be scheduled) and `batch` at least 1. Any
    /// `stale_after`, `delete_after` and `prune_after` is valid; one too long to count back
    /// from now (`Duration::MAX` as "never") finds nothing old enough.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("interval must be longer than zero".into());
        }
        if self.batch == 0 {
            return Err("batch must be at least 1".into());
        }
        Ok(())
    }
}

/// The time `age` before `now`: what finished (or went stale) before it is
/// old enough. `None` when that is before the earliest time a store holds
/// (year 0): then nothing is old enough.
fn cutoff(now: OffsetDateTime, age: Duration) -> Option<OffsetDateTime> {
    sub(now, age).filter(|t| *t >= timefmt::MIN)
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPass {
    /// Jobs marked stale.
    pub marked_stale: usize,
    /// Jobs deleted.
    pub deleted: usize,
    /// Ended webhook deliveries and `job.deleted` events pruned.
    pub pruned: usize,
}

/// Runs one pass: marks, then deletes, then prunes, batch by batch until
/// nothing is due.
/// Settings that fail [`RetentionConfig::validate`] are
/// [`StoreError::Invalid`], and nothing is touched.
pub async fn run_retention_pass(
    store: &dyn JobStore,
    clock: &dyn Clock,
    config: &RetentionConfig,
) -> Result<RetentionPass, StoreError> {
    config
        .validate()
        .map_err(|e| StoreError::Invalid(format!("retention settings: {e}")))?;
    let mut pass = RetentionPass::default();
    while let Some(before) = cutoff(clock.now(), config.stale_after) {
        let ids = store.mark_stale(before, config.batch).await?;
        pass.marked_stale = pass.marked_stale.saturating_add(ids.len());
        if ids.len() < config.batch {
            break;
        }
        tokio::task::yield_now().await;
    }
    while let Some(before) = cutoff(clock.now(), config.delete_after) {
        let ids = store.delete_stale(before, config.batch).await?;
        pass.deleted = pass.deleted.saturating_add(ids.len());
        if ids.len() < config.batch {
            break;
        }
        tokio::task::yield_now().await;
    }
    while let Some(before) = cutoff(clock.now(), config.prune_after) {
        let pruned = store.prune(before, config.batch).await?;
        pass.pruned = pass
            .pruned
            .saturating_add(pruned.deliveries)
            .saturating_add(pruned.tombstones);
        if pruned.deliveries < config.batch && pruned.tombstones < config.batch {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(pass)
}

/// The scheduler loop; ends when `stop` fires.
/// The leader role of retention in a shared store.
pub(crate) const RETENTION_ROLE: &str = "retention";

pub(crate) async fn retention_loop(
    store: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
    config: RetentionConfig,
    stop: CancellationToken,
    holder: String,
) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The leader renews its term every interval; a term of three intervals
    // survives a slow pass, and a dead leader is replaced within about
    // three intervals.
    let term = crate::runtime::leader_term(config.interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => break,
        }
        match store.try_lead(RETENTION_ROLE, &holder, term).await {
            Ok(true) => {}
            Ok(false) => {
                debug!("retention: another process leads");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "retention: could not take the lead; trying again next interval");
                continue;
            }
        }
        match run_retention_pass(&*store, &*clock, &config).await {
            Ok(p) if p != RetentionPass::default() => {
                info!(
                    marked_stale = p.marked_stale,
                    deleted = p.deleted,
                    pruned = p.pruned,
                    "retention pass"
                );
            }
            Ok(_) => debug!("retention pass: nothing due"),
            Err(e) => {
                warn!(error = %e, kind = ?e.kind(), "retention pass failed; trying again next interval")
            }
        }
    }
}
