//! PostgreSQL store: the legacy app's own database, shared by every gateway replica.
//!
//! The legacy schema is the owner's, so every column is cast on the way out (`serial` and
//! `bigserial`, `varchar` and `text`, an enum `status`, `timestamp` and `timestamptz` all read
//! alike); sessions run with `TimeZone=UTC`, so a `timestamp` column is read, and `now()` is
//! written, as UTC.
//!
//! The disconnect lock is a transaction-scoped advisory lock on a key derived from the id:
//! it serialises disconnects of one session across all gateways without taking a row lock
//! (the legacy app may keep writing `last_seen` meanwhile) and without inventing a status
//! value the legacy app does not know. It is released by COMMIT, by ROLLBACK when the handle
//! is dropped, or by the server when the connection dies.
//!
//! A disconnect costs three round trips: the unlocked read (which alone answers 404 and 400),
//! then `BEGIN` + lock + read as one simple query (each statement takes a fresh snapshot, so
//! the read sees what the previous holder of the lock committed), then `UPDATE … RETURNING` +
//! `COMMIT` as one. Those two carry the id formatted in (an `i64`: nothing to escape).

use super::{LockedSession, PoolSettings, Session, SessionStore, StoreError};
use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, FromRow, Postgres, Row};
use std::str::FromStr;
use std::sync::LazyLock;
use tokio::sync::OnceCell;

/// The columns cast to the types the gateway decodes, whatever the legacy schema uses.
const CAST_COLUMNS: &str = "id::int8 AS id, session_id::text AS session_id, \
    status::text AS status, phone_number::text AS phone_number, \
    last_seen::timestamptz AS last_seen, auth_folder_path::text AS auth_folder_path, \
    whatsapp_user_id::text AS whatsapp_user_id, created_at::timestamptz AS created_at, \
    updated_at::timestamptz AS updated_at";

static SELECT: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {CAST_COLUMNS} FROM whatsapp_sessions WHERE id = $1"));
const APPLY_OWED: &str =
    "UPDATE whatsapp_sessions SET status = 'disconnected', updated_at = now() \
    WHERE id = $1 AND status::text = 'connected' AND session_id::text = $2";
/// One 64-bit advisory key per session id, in a namespace of its own so it does not collide
/// with advisory locks the legacy app may take on bare ids.
fn lock_and_read(id: i64) -> String {
    format!(
        "BEGIN; \
         SELECT pg_advisory_xact_lock(hashtextextended('whatsapp-gateway/disconnect/{id}', 0)); \
         SELECT {CAST_COLUMNS} FROM whatsapp_sessions WHERE id = {id}"
    )
}

/// The update and the COMMIT that releases the lock.
fn mark_and_commit(id: i64) -> String {
    format!(
        "UPDATE whatsapp_sessions SET status = 'disconnected', updated_at = now() \
         WHERE id = {id} RETURNING {CAST_COLUMNS}; COMMIT"
    )
}

/// The session row among the results of a simple query (the other statements return rows of
/// one column or none).
fn session_row(rows: &[PgRow]) -> Result<Option<Session>, StoreError> {
    Ok(rows
        .iter()
        .find(|r| r.len() > 1)
        .map(Session::from_row)
        .transpose()?)
}

pub struct PostgresStore {
    options: PgConnectOptions,
    settings: PoolSettings,
    pool: OnceCell<PgPool>,
}

impl PostgresStore {
    pub fn new(url: &str, settings: PoolSettings) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .options([("TimeZone", "UTC")])
            .application_name("whatsapp-gateway");
        Ok(PostgresStore {
            options,
            settings,
            pool: OnceCell::new(),
        })
    }

    /// Applies `migrations/postgres`, recording them in `_sqlx_migrations`. Only on request.
    pub async fn migrate(&self) -> Result<(), anyhow::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.settings.acquire_timeout)
            .connect_with(self.options.clone())
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        pool.close().await;
        Ok(())
    }

    async fn pool(&self) -> &PgPool {
        self.pool
            .get_or_init(|| async {
                PgPoolOptions::new()
                    .max_connections(self.settings.max_connections)
                    .acquire_timeout(self.settings.acquire_timeout)
                    .connect_lazy_with(self.options.clone())
            })
            .await
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn find(&self, id: i64) -> Result<Option<Session>, StoreError> {
        Ok(sqlx::query_as(&SELECT)
            .bind(id)
            .fetch_optional(self.pool().await)
            .await?)
    }

    async fn lock(&self, id: i64) -> Result<Box<dyn LockedSession>, StoreError> {
        let mut session = PostgresSession {
            conn: Some(self.pool().await.acquire().await?),
            id,
            row: None,
        };
        let sql = lock_and_read(id);
        let rows = session.conn()?.fetch_all(sql.as_str()).await?;
        session.row = Some(session_row(&rows)?);
        Ok(Box::new(session))
    }

    async fn apply_owed(&self, id: i64, session_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(APPLY_OWED)
            .bind(id)
            .bind(session_id)
            .execute(self.pool().await)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool().await).await?;
        Ok(())
    }
}

struct PostgresSession {
    /// The connection with the transaction open; `None` once committed.
    conn: Option<PoolConnection<Postgres>>,
    id: i64,
    /// The row `lock` read under the lock, until `fetch` hands it out.
    row: Option<Option<Session>>,
}

impl PostgresSession {
    fn conn(&mut self) -> Result<&mut PoolConnection<Postgres>, StoreError> {
        self.conn
            .as_mut()
            .ok_or(StoreError::Database(sqlx::Error::PoolClosed))
    }
}

#[async_trait]
impl LockedSession for PostgresSession {
    async fn fetch(&mut self) -> Result<Option<Session>, StoreError> {
        if let Some(row) = self.row.take() {
            return Ok(row);
        }
        let id = self.id;
        Ok(sqlx::query_as(&SELECT)
            .bind(id)
            .fetch_optional(&mut **self.conn()?)
            .await?)
    }

    async fn mark_disconnected(&mut self) -> Result<Option<Session>, StoreError> {
        let id = self.id;
        let sql = mark_and_commit(id);
        let rows = self.conn()?.fetch_all(sql.as_str()).await?;
        // Committed: the connection goes back to the pool as it is.
        self.conn = None;
        session_row(&rows)
    }
}

/// A handle dropped before its COMMIT (the row changed, the orchestrator refused, an error):
/// the transaction is rolled back, releasing the lock, before the connection goes back to the
/// pool; if that fails, or there is no runtime to do it on, the connection is closed instead
/// (the server then rolls back).
impl Drop for PostgresSession {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if conn.execute("ROLLBACK").await.is_err() {
                        conn.close_on_drop();
                    }
                });
            }
            Err(_) => drop(conn.detach()),
        }
    }
}
