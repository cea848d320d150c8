//! The session store: the legacy `whatsapp_sessions` table, behind a small trait so SQLite
//! (the embedded default) and PostgreSQL (production) are two implementations of one contract.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use std::time::Duration;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// One row of `whatsapp_sessions`, the columns the legacy route returned, in its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Session {
    pub id: i64,
    pub session_id: Option<String>,
    pub status: Option<String>,
    pub phone_number: Option<String>,
    #[serde(serialize_with = "js_date")]
    pub last_seen: Option<DateTime<Utc>>,
    pub auth_folder_path: Option<String>,
    pub whatsapp_user_id: Option<String>,
    #[serde(serialize_with = "js_date")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "js_date")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// Timestamps as JavaScript's `Date.prototype.toJSON` writes them: UTC, milliseconds, `Z`.
fn js_date<S: Serializer>(value: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(t) => s.collect_str(&t.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
        None => s.serialize_none(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the statement. The text is sqlx's, which
    /// names neither the DSN nor the password; it goes to logs only, never to a client.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Where the sessions live.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// A handle on session `id` for one request (in the PostgreSQL store, one pooled
    /// connection, held until the handle is dropped).
    async fn open(&self, id: i64) -> Result<Box<dyn SessionHandle>, StoreError>;

    /// The owed write of the journal: marks row `id` disconnected only if it is still
    /// `connected` with this `session_id`. `Ok(true)` if it wrote, `Ok(false)` if the row no
    /// longer matches (reconnected, changed or gone) and nothing was written.
    async fn apply_owed(&self, id: i64, session_id: &str) -> Result<bool, StoreError>;

    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// What [`SessionHandle::find`] read.
#[derive(Debug)]
pub struct Found {
    /// `None` when there is no such row.
    pub row: Option<Session>,
    /// The disconnect lock was taken and the row read under it.
    pub locked: bool,
}

/// One session's row, read and then possibly locked and written. The disconnect lock
/// excludes every other holder of the same id that shares this database (in the PostgreSQL
/// store, across gateway processes) and is held until `mark_disconnected` or the drop.
#[async_trait]
pub trait SessionHandle: Send {
    /// Reads the row without waiting for any lock. With `try_lock`, a row that is `connected`
    /// also takes the session's disconnect lock if nobody holds it, and is then read under it
    /// (`locked: true`). The caller asks only while it holds the in-process lock of the id.
    async fn find(&mut self, try_lock: bool) -> Result<Found, StoreError>;

    /// Takes the session's disconnect lock, waiting for it, then reads the row under it.
    async fn lock(&mut self) -> Result<Option<Session>, StoreError>;

    /// Under the lock: sets `status = 'disconnected'`, `updated_at = now()`, returns the row
    /// as written (`None` if the row vanished meanwhile), and releases the lock.
    async fn mark_disconnected(&mut self) -> Result<Option<Session>, StoreError>;
}

/// Connection settings shared by both stores.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// Which store a `DATABASE_URL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// The columns the gateway reads, shared by every query of both stores.
pub(crate) const COLUMNS: &str = "id, session_id, status, phone_number, last_seen, \
    auth_folder_path, whatsapp_user_id, created_at, updated_at";

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_are_written_like_date_to_json() {
        let t = Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0).single();
        let row = Session {
            id: 1,
            session_id: Some("s".into()),
            status: Some("disconnected".into()),
            phone_number: None,
            last_seen: t,
            auth_folder_path: None,
            whatsapp_user_id: None,
            created_at: t.map(|t| t + chrono::Duration::microseconds(1_234_567)),
            updated_at: None,
        };
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(
            json,
            r#"{"id":1,"session_id":"s","status":"disconnected","phone_number":null,"last_seen":"2024-01-01T12:00:00.000Z","auth_folder_path":null,"whatsapp_user_id":null,"created_at":"2024-01-01T12:00:01.234Z","updated_at":null}"#
        );
    }
}
