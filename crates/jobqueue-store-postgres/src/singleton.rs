//! Singleton work among the processes sharing the database: leaders with a
//! term (retention, lease rescue), and webhook deliveries claimed with a
//! lease so two dispatchers never post one at the same time.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jobqueue_core::apply::lease_until;
use jobqueue_core::{Delivery, DeliveryStatus, StoreError};
use time::OffsetDateTime;

use crate::error::db_err;
use crate::rows::{DeliveryRow, sql_count};
use crate::schema::webhook_deliveries;
use crate::tx::Tx;

/// Takes the role `$1` for `$2` until `$4`, or renews it, when `$2` holds
/// it or its holder's term ended before `$3`; returns a row when `$2` leads.
const LEAD_SQL: &str = "\
INSERT INTO leaders AS l (role, holder, expires_at) VALUES ($1, $2, $4)
ON CONFLICT (role) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
    WHERE l.holder = EXCLUDED.holder OR l.expires_at <= $3
RETURNING holder";

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = Text)]
    #[expect(dead_code, reason = "only whether a row came back matters")]
    holder: String,
}

/// Whether `holder` leads `role` after this call (see
/// [`JobStore::try_lead`](jobqueue_core::JobStore::try_lead)). One
/// statement: the row lock of `role` orders two callers, and the second sees
/// the first's term.
pub(crate) async fn try_lead(
    conn: &mut AsyncPgConnection,
    now: OffsetDateTime,
    role: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let until = lease_until(now, ttl)?;
    let rows: Vec<Holder> = diesel::sql_query(LEAD_SQL)
        .bind::<Text, _>(role)
        .bind::<Text, _>(holder)
        .bind::<Timestamptz, _>(now)
        .bind::<Timestamptz, _>(until)
        .load(conn)
        .await
        .map_err(db_err)?;
    Ok(!rows.is_empty())
}

/// Claims up to `limit` due deliveries until `now + lease_for`: locks them
/// with `SKIP LOCKED` (a delivery another dispatcher is claiming is not
/// waited for) and moves their `next_attempt_at` to the lease's end, so no
/// other claim returns them before then unless an attempt is recorded. The
/// deliveries are returned as they were before the claim.
pub(crate) async fn claim_deliveries(
    tx: &mut Tx,
    limit: usize,
    lease_for: Duration,
) -> Result<Vec<Delivery>, StoreError> {
    let now = tx.now;
    let until = lease_until(now, lease_for)?;
    let rows: Vec<DeliveryRow> = webhook_deliveries::table
        .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str()))
        .filter(webhook_deliveries::next_attempt_at.le(now))
        .order((
            webhook_deliveries::next_attempt_at,
            webhook_deliveries::event_seq,
            webhook_deliveries::id,
        ))
        .limit(sql_count(limit))
        .select(DeliveryRow::as_select())
        .for_update()
        .skip_locked()
        .load(tx.conn())
        .await
        .map_err(db_err)?;
    let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
    if !ids.is_empty() {
        diesel::update(webhook_deliveries::table.filter(webhook_deliveries::id.eq_any(&ids)))
            .set(webhook_deliveries::next_attempt_at.eq(until))
            .execute(tx.conn())
            .await
            .map_err(db_err)?;
    }
    rows.into_iter().map(DeliveryRow::into_delivery).collect()
}
