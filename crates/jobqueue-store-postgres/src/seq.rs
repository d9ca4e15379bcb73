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

use diesel::sql_types::{Array, BigInt};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jobqueue_core::{Event, EventSink, StoreError};
use tokio::sync::oneshot;

use crate::error::{db_err, internal};

/// Takes `$1` numbers from the counter and records them as reserved, a
/// range per transaction of the group: the transaction `$4[i]` has the
/// `$3[i]` numbers after the first `$2[i]` of the group's; returns the
/// number before the group's first.
pub(crate) const RESERVE_SQL: &str = "\
WITH s AS (
    UPDATE store_state SET last_seq = last_seq + $1 WHERE id = 1
    RETURNING last_seq - $1 AS n
), r AS (
    INSERT INTO seq_reservations (first_seq, last_seq, owner)
    SELECT n + u.before + 1, n + u.before + u.count, u.owner
    FROM s, unnest($2::int8[], $3::int8[], $4::int8[]) AS u (before, count, owner)
)
SELECT n FROM s";

/// The first number readers must not pass: that of the first reservation
/// whose owner may still commit, or NULL.
pub(crate) const HORIZON_SQL: &str = "\
(SELECT min(first_seq) FROM seq_reservations \
 WHERE pg_xact_status(owner::text::xid8) IN ('in progress', 'committed'))";

diesel::define_sql_function! {
    /// The id of the caller's transaction (assigned if it has none), with
    /// its epoch: the number `pg_current_xact_id()` gives, as a `bigint`
    /// that a query built with diesel can return with its rows (and that
    /// diesel then keeps prepared).
    fn txid_current() -> BigInt;
}

/// The id of the caller's transaction, on its own.
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

/// A reservation asked for: how many numbers, for which transaction, and
/// where the number before its first goes.
struct Waiting {
    count: i64,
    owner: i64,
    /// Whether it takes a place in the publishing queue (not for
    /// `enqueue_in`, whose commit this process does not see).
    queued: bool,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// Locks `mutex`, whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
    /// The reservations asked for and not yet made, in the order asked.
    waiting: Mutex<Vec<Waiting>>,
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
            waiting: Mutex::new(Vec::new()),
            queue: Mutex::new(BTreeMap::new()),
        }
    }

    /// Reserves `count` numbers for the transaction `owner`, and a place in
    /// the publishing queue; returns the number before the first.
    ///
    /// Reservations are made in groups: the caller that holds the
    /// reservation connection makes, in one statement, those of every
    /// transaction waiting meanwhile (in the order they asked), so the
    /// serialised step costs one round trip per group, not per transaction.
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
        let (reply, mut answer) = oneshot::channel();
        lock(&self.waiting).push(Waiting {
            count,
            owner,
            queued,
            reply,
        });
        let mut guard = self.conn.lock().await;
        // A group made while this call waited for the connection may hold
        // its reservation already.
        match answer.try_recv() {
            Ok(result) => return result,
            Err(oneshot::error::TryRecvError::Closed) => {
                return Err(internal("postgres: a reservation was abandoned"));
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let group = std::mem::take(&mut *lock(&self.waiting));
        self.reserve_group(&mut guard, group).await;
        drop(guard);
        answer
            .await
            .unwrap_or_else(|_| Err(internal("postgres: a reservation was abandoned")))
    }

    /// Reserves the numbers of `group` in one statement and answers each.
    async fn reserve_group(&self, conn: &mut Option<AsyncPgConnection>, group: Vec<Waiting>) {
        if group.is_empty() {
            return;
        }
        let mut before = Vec::with_capacity(group.len());
        let mut counts = Vec::with_capacity(group.len());
        let mut owners = Vec::with_capacity(group.len());
        let mut total: i64 = 0;
        for w in &group {
            before.push(total);
            counts.push(w.count);
            owners.push(w.owner);
            total = total.saturating_add(w.count);
        }
        let reserved = match self.connected(conn).await {
            Ok(c) => diesel::sql_query(RESERVE_SQL)
                .bind::<BigInt, _>(total)
                .bind::<Array<BigInt>, _>(&before)
                .bind::<Array<BigInt>, _>(&counts)
                .bind::<Array<BigInt>, _>(&owners)
                .get_result::<Number>(c)
                .await
                .map_err(db_err)
                .and_then(|row| {
                    u64::try_from(row.n)
                        .map_err(|_| internal(format!("postgres: the event counter is {}", row.n)))
                }),
            Err(e) => Err(e),
        };
        match reserved {
            Ok(base) => {
                // The number before each transaction's first.
                let bases: Vec<u64> = before
                    .iter()
                    .map(|b| base.saturating_add(b.unsigned_abs()))
                    .collect();
                let mut queue = lock(&self.queue);
                for (w, b) in group.iter().zip(&bases) {
                    if w.queued {
                        queue.insert(b.saturating_add(1), None);
                    }
                }
                drop(queue);
                for (w, b) in group.into_iter().zip(bases) {
                    let queued = w.queued;
                    if w.reply.send(Ok(b)).is_err() && queued {
                        // Its caller is gone, and with it its transaction
                        // (rolled back: readers skip the reservation).
                        lock(&self.queue).remove(&b.saturating_add(1));
                    }
                }
            }
            Err(e) => {
                // Whatever state it is in, a fresh one serves the next group.
                *conn = None;
                for w in group {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// The reservation connection, opened if it is not.
    async fn connected<'c>(
        &self,
        conn: &'c mut Option<AsyncPgConnection>,
    ) -> Result<&'c mut AsyncPgConnection, StoreError> {
        if conn.is_none() {
            // Every appending transaction waits for this: bounded.
            let mut fresh = crate::store::establish(&self.url, self.connect_timeout).await?;
            fresh.batch_execute(&self.setup).await.map_err(db_err)?;
            *conn = Some(fresh);
        }
        conn.as_mut()
            .ok_or_else(|| internal("postgres: the reservation connection vanished"))
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
        let mut queue = lock(&self.queue);
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
                publish(sink, events);
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
fn publish(sink: &Arc<dyn EventSink>, events: Vec<Event>) {
    let publish = std::panic::AssertUnwindSafe(|| sink.publish_owned(events));
    if std::panic::catch_unwind(publish).is_err() {
        tracing::warn!("the event sink panicked; its subscribers resync from the store");
    }
}
