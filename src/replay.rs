//! Replays the journal's owed writes until each lands or no longer applies, with capped
//! exponential backoff (the `backon` crate) while the database is unavailable.

use crate::journal::Journal;
use crate::store::SessionStore;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::sync::Arc;
use std::time::Duration;

pub async fn run(journal: Arc<Journal>, store: Arc<dyn SessionStore>, max_delay: Duration) {
    let schedule = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max_delay)
        .with_jitter()
        .without_max_times();
    let mut backoff = schedule.build();
    loop {
        let pending = journal.pending();
        if pending.is_empty() {
            // notify_one keeps a permit, so a write owed since `pending()` is not missed.
            journal.owed.notified().await;
            continue;
        }
        let mut failed = false;
        for entry in pending {
            let started = std::time::Instant::now();
            let outcome = store.apply_owed(entry.id, &entry.session_id).await;
            crate::metrics::observe_database(
                "owed_write",
                outcome.is_ok(),
                started.elapsed().as_secs_f64(),
            );
            match outcome {
                Ok(true) => tracing::info!(
                    id = entry.id,
                    session_id = entry.session_id,
                    seq = entry.seq,
                    "owed write landed"
                ),
                Ok(false) => tracing::warn!(
                    id = entry.id,
                    session_id = entry.session_id,
                    seq = entry.seq,
                    "owed write dropped: the row is no longer connected with that session_id"
                ),
                Err(e) => {
                    tracing::warn!(id = entry.id, seq = entry.seq, error = %e,
                        "owed write not applied yet; will retry");
                    failed = true;
                    break;
                }
            }
            if let Err(e) = journal.done(entry.seq) {
                tracing::error!(seq = entry.seq, error = %e, "could not record an owed write as done");
            }
        }
        if failed {
            let delay = backoff.next().unwrap_or(max_delay);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = journal.owed.notified() => {}
            }
        } else {
            backoff = schedule.build();
        }
    }
}
