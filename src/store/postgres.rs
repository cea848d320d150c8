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
//! Round trips are what a disconnect costs PostgreSQL (its CPU goes mostly to the socket
//! work of each one), so one request uses one connection and four round trips: the unlocked
//! read; `BEGIN`, the lock and the read under it in one simple query; the update and
//! `COMMIT` in another; sqlx's ping when the connection goes back to the pool. The two
//! statements inside those simple queries are prepared once per connection (`PREPARE` in
//! `after_connect`) and run with `EXECUTE`, so they are not planned again on every request.
//! This needs session-level connections: PostgreSQL itself, or a pooler in session mode.

use super::{PoolSettings, Session, SessionHandle, SessionStore, StoreError};
use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, FromRow, Postgres};
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
/// Run on every new connection: the two statements of the locked part, prepared once.
static PREPARE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "PREPARE gateway_find (int8) AS {}; \
         PREPARE gateway_mark_disconnected (int8) AS \
         UPDATE whatsapp_sessions SET status = 'disconnected', updated_at = now() \
         WHERE id = $1 RETURNING {CAST_COLUMNS}",
        SELECT.as_str()
    )
});
const APPLY_OWED: &str =
    "UPDATE whatsapp_sessions SET status = 'disconnected', updated_at = now() \
    WHERE id = $1 AND status::text = 'connected' AND session_id::text = $2";

/// `BEGIN`, the lock, and the read under it: one simple query, one round trip. Statements of
/// a simple query each get their own snapshot, so the read sees whatever the previous holder
/// of the lock committed. One 64-bit advisory key per session id, in a namespace of its own
/// so it does not collide with advisory locks the legacy app may take on bare ids. `id` is
/// an integer, so formatting it in is safe.
fn lock_and_find(id: i64) -> String {
    format!(
        "BEGIN; \
         SELECT pg_advisory_xact_lock(hashtextextended('whatsapp-gateway/disconnect/{id}', 0)); \
         EXECUTE gateway_find({id})"
    )
}

/// The update and `COMMIT`: one round trip.
fn mark_and_commit(id: i64) -> String {
    format!("EXECUTE gateway_mark_disconnected({id}); COMMIT")
}

/// See [`PostgresStore::pool`].
const PING_WHEN_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

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
                    // sqlx pings every connection it hands out: a round trip (and PostgreSQL
                    // CPU) per query. Only connections that sat idle get it here: under load
                    // none do, and one that idled across a database restart is replaced
                    // before a request uses it.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_WHEN_IDLE_FOR {
                                conn.ping().await?;
                            }
                            Ok(true)
                        })
                    })
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute(PREPARE.as_str()).await?;
                            Ok(())
                        })
                    })
                    .connect_lazy_with(self.options.clone())
            })
            .await
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn open(&self, id: i64) -> Result<Box<dyn SessionHandle>, StoreError> {
        Ok(Box::new(PostgresSession {
            conn: Some(self.pool().await.acquire().await?),
            id,
            in_transaction: false,
        }))
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
    /// `None` only while being dropped.
    conn: Option<PoolConnection<Postgres>>,
    id: i64,
    /// A transaction (and the lock with it) may be open on `conn`: set before `BEGIN` is
    /// sent, cleared once `COMMIT` is answered.
    in_transaction: bool,
}

impl PostgresSession {
    fn conn(&mut self) -> Result<&mut PoolConnection<Postgres>, StoreError> {
        self.conn
            .as_mut()
            .ok_or(StoreError::Database(sqlx::Error::PoolClosed))
    }
}

#[async_trait]
impl SessionHandle for PostgresSession {
    async fn find(&mut self) -> Result<Option<Session>, StoreError> {
        let id = self.id;
        Ok(sqlx::query_as(&SELECT)
            .bind(id)
            .fetch_optional(&mut **self.conn()?)
            .await?)
    }

    async fn lock(&mut self) -> Result<Option<Session>, StoreError> {
        let sql = lock_and_find(self.id);
        self.in_transaction = true;
        let rows = self.conn()?.fetch_all(sql.as_str()).await?;
        // The lock's own row (one `void` column) comes first, then the session's, if any.
        Ok(rows.get(1).map(Session::from_row).transpose()?)
    }

    async fn mark_disconnected(&mut self) -> Result<Option<Session>, StoreError> {
        let sql = mark_and_commit(self.id);
        let rows = self.conn()?.fetch_all(sql.as_str()).await?;
        self.in_transaction = false;
        Ok(rows.first().map(Session::from_row).transpose()?)
    }
}

/// A handle dropped with its transaction open (a refusal, an error, a timeout) must roll
/// back before its connection serves anyone else, or the lock would stay with the pool.
/// sqlx returns connections from a spawned task as well, so there is always a runtime here.
impl Drop for PostgresSession {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take().filter(|_| self.in_transaction) else {
            return;
        };
        let id = self.id;
        tokio::spawn(async move {
            if let Err(error) = conn.execute("ROLLBACK").await {
                // The server rolls back when the connection closes.
                tracing::warn!(id, %error, "ROLLBACK failed; closing the connection");
                conn.close_on_drop();
            }
        });
    }
}
