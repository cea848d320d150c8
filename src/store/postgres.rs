//! PostgreSQL store: the legacy app's own database, shared by every gateway replica.
//!
//! The legacy schema is the owner's, so every column is cast on the way out (`serial` and
//! `bigserial`, `varchar` and `text`, an enum `status`, `timestamp` and `timestamptz` all read
//! alike); sessions run with `TimeZone=UTC`, so a `timestamp` column is read, and `now()` is
//! written, as UTC.
//!
//! The disconnect lock is a session-level advisory lock on a key derived from the id: it
//! serialises disconnects of one session across all gateways without taking a row lock (the
//! legacy app may keep writing `last_seen` meanwhile) and without inventing a status value
//! the legacy app does not know. It is released right after the update's `COMMIT`, in the
//! same round trip; by a task of its own when the handle is dropped without it (a refusal,
//! an error, a timeout); or by the server when the connection dies.
//!
//! Round trips are what a disconnect costs PostgreSQL (its CPU goes mostly to the socket work
//! of each one), so a request uses one connection and, when nobody else is disconnecting the
//! same session, three round trips:
//!
//! 1. `EXECUTE gateway_try_lock(id); EXECUTE gateway_find(id)`: the first statement takes the
//!    lock if the row is `connected` and the lock is free; the second reads the row, with a
//!    snapshot of its own taken after that, so when the lock was taken the row is read under
//!    it. A row that cannot be disconnected takes no lock: a check costs this round trip and
//!    the ping. (While another request of this gateway holds the session's in-process lock,
//!    the first read is a plain one and never takes the lock.)
//! 2. After the orchestrator: `BEGIN; EXECUTE gateway_mark_disconnected(id); COMMIT;` and the
//!    unlock, in that order, so nobody can take the lock before the update is visible.
//! 3. sqlx's ping when the connection goes back to the pool.
//!
//! The statements are prepared once per connection (`PREPARE` in `after_connect`) and run with
//! `EXECUTE` inside simple queries, so nothing is planned per request. This needs
//! session-level connections: PostgreSQL itself, or a pooler in session mode.

use super::{Found, PoolSettings, Session, SessionHandle, SessionStore, StoreError};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Either, Executor, FromRow, Postgres, Row};
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
/// The session's advisory key: one 64-bit key per id, in a namespace of its own so it does
/// not collide with advisory locks the legacy app may take on bare ids.
const LOCK_KEY: &str = "hashtextextended('whatsapp-gateway/disconnect/' || $1, 0)";

/// Run on every new connection: the statements of the disconnect, prepared once.
static PREPARE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "PREPARE gateway_find (int8) AS {select}; \
         PREPARE gateway_try_lock (int8) AS SELECT CASE WHEN status::text = 'connected' \
           THEN pg_try_advisory_lock({LOCK_KEY}) ELSE false END \
           FROM whatsapp_sessions WHERE id = $1; \
         PREPARE gateway_lock (int8) AS SELECT pg_advisory_lock({LOCK_KEY}); \
         PREPARE gateway_unlock (int8) AS SELECT pg_advisory_unlock({LOCK_KEY}); \
         PREPARE gateway_mark_disconnected (int8) AS \
           UPDATE whatsapp_sessions SET status = 'disconnected', updated_at = now() \
           WHERE id = $1 RETURNING {CAST_COLUMNS}",
        select = SELECT.as_str()
    )
});
const APPLY_OWED: &str =
    "UPDATE whatsapp_sessions SET status = 'disconnected', updated_at = now() \
    WHERE id = $1 AND status::text = 'connected' AND session_id::text = $2";

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
            lock_held: false,
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
    /// The session's lock may be held by `conn`: set before it is asked for, cleared once it
    /// is known not to be held.
    lock_held: bool,
    /// A transaction may be open on `conn`: set before `BEGIN`, cleared after `COMMIT`.
    in_transaction: bool,
}

impl PostgresSession {
    fn conn(&mut self) -> Result<&mut PoolConnection<Postgres>, StoreError> {
        self.conn
            .as_mut()
            .ok_or(StoreError::Database(sqlx::Error::PoolClosed))
    }

    /// Runs `sql` (statements separated by `;`) as one simple query, one round trip, and
    /// returns the rows of each statement.
    async fn run(&mut self, sql: &str) -> Result<Vec<Vec<PgRow>>, StoreError> {
        let mut results = self.conn()?.fetch_many(sql);
        let (mut statements, mut rows) = (Vec::new(), Vec::new());
        while let Some(item) = results.try_next().await? {
            match item {
                Either::Left(_done) => statements.push(std::mem::take(&mut rows)),
                Either::Right(row) => rows.push(row),
            }
        }
        Ok(statements)
    }
}

/// The first row of a statement's rows, as a [`Session`].
fn session(rows: Option<&Vec<PgRow>>) -> Result<Option<Session>, StoreError> {
    Ok(rows
        .and_then(|rows| rows.first())
        .map(Session::from_row)
        .transpose()?)
}

#[async_trait]
impl SessionHandle for PostgresSession {
    async fn find(&mut self, try_lock: bool) -> Result<Found, StoreError> {
        let id = self.id;
        if !try_lock {
            // A plain read: sqlx's own prepared statement, binary rows.
            let row = sqlx::query_as(&SELECT)
                .bind(id)
                .fetch_optional(&mut **self.conn()?)
                .await?;
            return Ok(Found { row, locked: false });
        }
        self.lock_held = true;
        let rows = self
            .run(&format!(
                "EXECUTE gateway_try_lock({id}); EXECUTE gateway_find({id})"
            ))
            .await?;
        self.lock_held = rows
            .first()
            .and_then(|rows| rows.first())
            .map(|row| row.try_get::<bool, _>(0))
            .transpose()?
            .unwrap_or(false);
        Ok(Found {
            row: session(rows.get(1))?,
            locked: self.lock_held,
        })
    }

    async fn lock(&mut self) -> Result<Option<Session>, StoreError> {
        let id = self.id;
        self.lock_held = true;
        let rows = self
            .run(&format!(
                "EXECUTE gateway_lock({id}); EXECUTE gateway_find({id})"
            ))
            .await?;
        session(rows.get(1))
    }

    async fn mark_disconnected(&mut self) -> Result<Option<Session>, StoreError> {
        let id = self.id;
        self.in_transaction = true;
        let rows = self
            .run(&format!(
                "BEGIN; EXECUTE gateway_mark_disconnected({id}); COMMIT; \
                 EXECUTE gateway_unlock({id})"
            ))
            .await?;
        (self.in_transaction, self.lock_held) = (false, false);
        session(rows.get(1))
    }
}

/// A handle dropped still holding the lock (a refusal, an error, a timeout) must give it back
/// before its connection serves anyone else, or the lock would stay with the pool. sqlx
/// returns connections from a spawned task as well, so there is always a runtime here.
impl Drop for PostgresSession {
    fn drop(&mut self) {
        if !(self.lock_held || self.in_transaction) {
            return;
        }
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let sql = if self.in_transaction {
            "ROLLBACK; SELECT pg_advisory_unlock_all()"
        } else {
            "SELECT pg_advisory_unlock_all()"
        };
        let id = self.id;
        tokio::spawn(async move {
            if let Err(error) = conn.execute(sql).await {
                // The server lets go of everything when the connection closes.
                tracing::warn!(id, %error, "releasing the disconnect lock failed; closing the connection");
                conn.close_on_drop();
            }
        });
    }
}
