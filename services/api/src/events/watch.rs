//! WatchEvents: one query shape for replay and live. Events are read in commit order (`Mark`,
//! only transactions no running one precedes), so the switch from the log to new events has
//! no gap and no duplicate. The stream's buffer is bounded; a consumer that leaves it full
//! for too long is closed with SLOW_CONSUMER and resumes from the last id it received.
use std::sync::Arc;

use coursewire_proto::v1::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::log::{COLUMNS, event_from_row, type_terms};
use crate::AppState;
use crate::streams::{Permit, shutting_down};
use coursewire_core::error::{ApiError, Reason};
use coursewire_core::events::{Mark, in_order};

const CHUNK: i64 = 200;

pub fn stream(
    state: Arc<AppState>,
    permit: Permit,
    types: Vec<String>,
    mut after: Mark,
) -> ReceiverStream<Result<Event, Status>> {
    let org = permit.org().to_string();
    // One slot more than the buffer, kept for the closing status.
    let (tx, rx) = mpsc::channel(state.hub.watch_buffer + 1);
    let mut advanced = state.hub.advanced.subscribe();
    tokio::spawn(async move {
        let _permit = permit;
        let mut binds = vec![org.clone()];
        let terms = type_terms(&types, &mut binds);
        let mut last_sent = String::new();
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE org_id = $1{terms} AND (txid, id) > (${}, ${}) AND {} \
             ORDER BY txid, id LIMIT ${}",
            binds.len() + 1,
            binds.len() + 2,
            in_order(state.db.backend),
            binds.len() + 3
        );
        loop {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for b in &binds {
                q = q.bind(b.clone());
            }
            let rows = match q.bind(after.txid).bind(after.id.clone()).bind(CHUNK).fetch_all(state.db.pool()).await {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = tx.send(Err(ApiError::from(e).into())).await;
                    return;
                }
            };
            for row in &rows {
                if state.streams.is_stopping() {
                    let _ = tx.try_send(Err(shutting_down("resume_after_event_id", &last_sent)));
                    return;
                }
                let event = match event_from_row(row) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if !wait_for_room(&tx, &state).await {
                    let e = ApiError::new(
                        Reason::SlowConsumer,
                        "the stream's buffer stayed full; resume with after_event_id",
                    )
                    .with("resume_after_event_id", last_sent)
                    .help("read faster, or resume from the last event id you processed");
                    let _ = tx.try_send(Err(e.into()));
                    return;
                }
                after = Mark { txid: row_txid(row), id: event.id.clone() };
                last_sent.clone_from(&event.id);
                if tx.send(Ok(event)).await.is_err() {
                    return; // the client went away
                }
            }
            if (rows.len() as i64) < CHUNK {
                // Caught up: wait for the relay to read more (or poll, for other replicas).
                tokio::select! {
                    _ = advanced.changed() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                    _ = tx.closed() => return,
                    _ = state.streams.stopping() => {
                        let _ = tx.try_send(Err(shutting_down("resume_after_event_id", &last_sent)));
                        return;
                    }
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Waits until the buffer has room for an event and still one slot for a closing status.
async fn wait_for_room(tx: &mpsc::Sender<Result<Event, Status>>, state: &AppState) -> bool {
    let deadline = tokio::time::Instant::now() + state.hub.slow_consumer_timeout;
    while tx.capacity() <= 1 {
        if tokio::time::Instant::now() >= deadline || tx.is_closed() {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    true
}

fn row_txid(row: &sqlx::any::AnyRow) -> i64 {
    sqlx::Row::try_get(row, "txid").unwrap_or(0)
}
