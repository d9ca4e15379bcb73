//! Event sequence numbers that readers never see out of order.
//!
//! # The problem
//!
//! Numbers are handed out before their transactions commit, and
//! transactions commit in any order. If a reader read every committed event
//! after the last one it saw, a transaction holding a lower number that
//! commits after the reader passed it would be skipped for good: `events_after`
//! replay would have a gap.
//!
//! # The design: reserved numbers and a visibility guard
//!
//! - **Reserve.** When a transaction has done its work and is about to
//!   append `n` events, it takes `n` numbers from the counter row
//!   (`store_state.last_seq`) and records them in `seq_reservations`, with
//!   its own transaction id as the owner, in one statement
//!   ([`RESERVE_SQL`]) on a separate connection that commits at once. That
//!   connection commits asynchronously (`synchronous_commit = off`): the
//!   reservation is visible as soon as it is written, the counter row is
//!   free again after one statement, and no flush is waited for. So only
//!   this short step is serialised across the processes sharing the
//!   database (its row lock, and in a process a mutex around the
//!   connection); the transactions themselves commit in parallel, and
//!   PostgreSQL flushes many commits at once (group commit).
//! - **Append.** The transaction then inserts its events with those
//!   numbers, their webhook deliveries, and deletes its reservation, in one
//!   statement, and commits (synchronously: acknowledged means durable).
//! - **Guard.** A reader reads events only below the first number of every
//!   reservation it can see whose owner may still commit (its status is
//!   `in progress`, or `committed` after the reader's snapshot was taken;
//!   [`HORIZON_SQL`], evaluated in the reader's statement, so in its
//!   snapshot). A reservation of an owner that committed before the
//!   snapshot is gone in it (the owner deleted it in its commit); one of an
//!   owner that aborted is skipped: its numbers will never hold events.
//!
//! Why no number can appear behind a reader: reservations are committed one
//! after another in number order (the counter row's lock), each before its
//! owner's events. If a reader sees event `x`, the reservation of any `y <
//! x` committed before `x`'s reservation, hence before `x`'s events, hence
//! before the reader's snapshot: the reader sees it, unless its owner
//! already committed (then `y`'s events are visible too) or aborted (then
//! `y` holds nothing). Either way the reader stops below `y` or has `y`.
//! `last_seq` answers the number below the guard, so a subscriber starting
//! "from now" does not start past an event still to come.
//!
//! Durability: an asynchronous reservation can be lost in a crash, but only
//! together with its owner: the owner's synchronous commit comes later in
//! the WAL and flushes everything before it. Numbers lost that way are
//! handed out again, to events that never existed before.
//!
//! **Cost.** Per event-appending transaction: one round trip to learn its
//! transaction id, and the reservation statement (a round trip, serialised,
//! no flush). Numbers of a transaction that fails after reserving are never
//! used, so the numbers can have gaps (events never do). A transaction that
//! reserved and takes long to commit holds readers back until it ends, and
//! only such transactions do: other transactions in the database do not.
//!
//! # Publishing in order
//!
//! A process publishes its own events to its [`EventSink`](jobqueue_core::EventSink)
//! in number order, though its transactions commit in any order: each
//! reservation takes a place in the process's queue (in number order, since
//! it is taken under the reservation mutex), a commit fills its place, a
//! failure empties it, and the filled places at the front are published.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jobqueue_core::{Event, EventSink, StoreError};

use crate::error::{db_err, internal};

/// Takes `$1` numbers from the counter and records them as reserved by the
/// transaction `$2`; returns the number before the first one.
pub(crate) const RESERVE_SQL: &str = "\
WITH s AS (
    UPDATE store_state SET last_seq = last_seq + $1 WHERE id = 1
    RETURNING last_seq - $1 AS n
), r AS (
    INSERT INTO seq_reservations (first_seq, last_seq, owner)
    SELECT n + 1, n + $1, $2 FROM s
)
SELECT n FROM s";

/// The first number readers must not pass: that of the first reservation
/// whose owner may still commit, or NULL.
pub(crate) const HORIZON_SQL: &str = "\
(SELECT min(first_seq) FROM seq_reservations \
 WHERE pg_xact_status(owner::text::xid8) IN ('in progress', 'committed'))";

/// The transaction id of the caller's transaction (assigned if it has none).
pub(crate) const OWNER_SQL: &str = "SELECT pg_current_xact_id()::text::int8 AS n";

/// Removes reservations whose owner aborted (or is too old to know): their
/// numbers hold no events. Readers skip them anyway; this keeps the table
/// small after crashes.
pub(crate) const FORGET_ABORTED_SQL: &str = "\
DELETE FROM seq_reservations \
WHERE pg_xact_status(owner::text::xid8) IS NULL \
   OR pg_xact_status(owner::text::xid8) = 'aborted'";

/// One number, as the statements above return it.
#[derive(diesel::QueryableByName)]
pub(crate) struct Number {
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

/// A process's side of the design: the reservation connection and the
/// queue of events waiting to be published in order.
pub(crate) struct Sequencer {
    url: String,
    connect_timeout: Duration,
    /// The session settings of the reservation connection.
    setup: String,
    /// Opened on first use, dropped after any failure and opened again.
    conn: tokio::sync::Mutex<Option<AsyncPgConnection>>,
    /// By first number: `None` while its transaction runs, the events once
    /// it committed.
    queue: Mutex<BTreeMap<u64, Option<Vec<Event>>>>,
}

impl Sequencer {
    /// A sequencer for the database at `url`; `setup` selects the store's
    /// schema and names the session.
    pub(crate) fn new(url: &str, setup: &str, connect_timeout: Duration) -> Self {
        Self {
            url: url.to_owned(),
            connect_timeout,
            setup: format!("{setup}; SET synchronous_commit = off"),
            conn: tokio::sync::Mutex::new(None),
            queue: Mutex::new(BTreeMap::new()),
        }
    }

    /// Reserves `count` numbers for the transaction `owner`, and a place in
    /// the publishing queue; returns the number before the first.
    pub(crate) async fn reserve(&self, count: i64, owner: i64) -> Result<u64, StoreError> {
        self.reserve_numbers(count, owner, true).await
    }

    /// Reserves `count` numbers for the transaction `owner` without a place
    /// in the publishing queue: for a transaction of the program's own
    /// (`enqueue_in`), whose commit this process does not see. Its events
    /// reach subscribers from the store (the listener's notice at its
    /// commit, then `events_after`), never through the sink. Returns the
    /// number before the first.
    pub(crate) async fn reserve_detached(&self, count: i64, owner: i64) -> Result<u64, StoreError> {
        self.reserve_numbers(count, owner, false).await
    }

    /// Reserves the numbers, and the place in the queue if `queued`: taken
    /// under the connection's mutex, so places are in number order.
    async fn reserve_numbers(
        &self,
        count: i64,
        owner: i64,
        queued: bool,
    ) -> Result<u64, StoreError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            // Every appending transaction waits for this: bounded.
            let mut conn = crate::store::establish(&self.url, self.connect_timeout).await?;
            conn.batch_execute(&self.setup).await.map_err(db_err)?;
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(internal("postgres: the reservation connection vanished"));
        };
        let reserved = diesel::sql_query(RESERVE_SQL)
            .bind::<BigInt, _>(count)
            .bind::<BigInt, _>(owner)
            .get_result::<Number>(conn)
            .await;
        match reserved {
            Ok(row) => {
                let base = u64::try_from(row.n)
                    .map_err(|_| internal(format!("postgres: the event counter is {}", row.n)))?;
                if queued {
                    self.queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(base.saturating_add(1), None);
                }
                Ok(base)
            }
            Err(e) => {
                // Whatever state it is in, a fresh one serves the next call.
                *guard = None;
                Err(db_err(e))
            }
        }
    }

    /// The transaction of the reservation starting at `first` committed
    /// `events` (`Some`) or failed (`None`); publishes every committed
    /// place at the front of the queue, in order.
    pub(crate) fn settle(
        &self,
        first: u64,
        events: Option<Vec<Event>>,
        sink: Option<&Arc<dyn EventSink>>,
    ) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        match events {
            Some(events) => {
                queue.insert(first, Some(events));
            }
            None => {
                queue.remove(&first);
            }
        }
        while let Some(entry) = queue.first_entry() {
            if entry.get().is_none() {
                break;
            }
            let events = entry.remove().unwrap_or_default();
            if let Some(sink) = sink {
                publish(sink, &events);
            }
        }
    }

    /// Closes the reservation connection (the store is closing).
    pub(crate) async fn close(&self) {
        *self.conn.lock().await = None;
    }

    /// Deletes the reservation starting at `first` after its transaction
    /// failed; readers skip it anyway, so a failure here is only logged.
    pub(crate) async fn forget(&self, first: u64) {
        let mut guard = self.conn.lock().await;
        let Some(conn) = guard.as_mut() else {
            return;
        };
        let deleted = diesel::sql_query("DELETE FROM seq_reservations WHERE first_seq = $1")
            .bind::<BigInt, _>(i64::try_from(first).unwrap_or(i64::MAX))
            .execute(conn)
            .await;
        if let Err(e) = deleted {
            tracing::debug!(error = %e, "could not delete a failed transaction's reservation");
            *guard = None;
        }
    }
}

/// Hands committed events to the sink. The change is committed: a
/// panicking sink must not turn a successful write into a failed one;
/// subscribers resync from the store.
fn publish(sink: &Arc<dyn EventSink>, events: &[Event]) {
    let publish = std::panic::AssertUnwindSafe(|| sink.publish(events));
    if std::panic::catch_unwind(publish).is_err() {
        tracing::warn!("the event sink panicked; its subscribers resync from the store");
    }
}
