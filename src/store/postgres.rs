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
//! same session, two round trips:
//!
//! 1. `EXECUTE gateway_try_lock(id); EXECUTE gateway_find(id)`: the first statement takes the
//!    lock if the row is `connected` and the lock is free; the second reads the row, with a
//!    snapshot of its own taken after that, so when the lock was taken the row is read under
//!    it. A row that cannot be disconnected takes no lock: a check is this one round trip.
//!    (While another request of this gateway holds the session's in-process lock, the first
//!    read is a plain `EXECUTE gateway_find(id)` and never takes the lock.)
//! 2. After the orchestrator: `BEGIN; EXECUTE gateway_mark_disconnected(id); COMMIT;` and the
//!    unlock, in that order, so nobody can take the lock before the update is visible.
//!
//! Nothing is sent when the connection goes back to the pool (see [`Connector`]).
//!
//! The statements are prepared once per connection (`PREPARE` when it is opened) and run with
//! `EXECUTE` inside simple queries, so nothing is planned per request. This needs
//! session-level connections: PostgreSQL itself, or a pooler in session mode.

use super::{Found, PoolSettings, Session, SessionHandle, SessionStore, StoreError};
use async_trait::async_trait;
use deadpool::managed;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgRow};
use sqlx::{Connection, Either, Executor, FromRow, Row};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

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

/// A pooled connection that sat idle this long is pinged before use (see [`Connector`]).
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);
/// Connections are replaced after this long, as sqlx's own pool does by default.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

type Pool = managed::Pool<Connector>;
type Conn = managed::Object<Connector>;

/// Opens the pool's connections and checks them as they are handed out.
///
/// The pool is deadpool's, not sqlx's: sqlx's pool pings every connection given back to it,
/// a round trip (and PostgreSQL CPU) per request that cannot be turned off. Here nothing is
/// sent when a connection goes back; one that saw an error is closed instead of reused (see
/// [`PostgresSession`]), and one that sat idle is pinged before a request uses it, so a
/// connection that idled across a database restart is replaced first. Under load none is
/// idle that long.
struct Connector {
    options: PgConnectOptions,
}

impl managed::Manager for Connector {
    type Type = PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        let mut conn = PgConnection::connect_with(&self.options).await?;
        conn.execute(PREPARE.as_str()).await?;
        Ok(conn)
    }

    async fn recycle(
        &self,
        conn: &mut PgConnection,
        metrics: &managed::Metrics,
    ) -> managed::RecycleResult<sqlx::Error> {
        if metrics.age() >= MAX_LIFETIME {
            return Err(managed::RecycleError::message("past its lifetime"));
        }
        if metrics.last_used() >= PING_WHEN_IDLE_FOR {
            conn.ping().await?;
        }
        Ok(())
    }
}

/// Gives `conn` back to the pool, or closes it if `result` is an error: the connection may
/// be broken, and closing it is always safe (the server then releases whatever it held).
fn settle<T>(conn: Conn, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
    if result.is_err() {
        drop(Conn::take(conn));
    }
    Ok(result?)
}

fn pool_error(e: managed::PoolError<sqlx::Error>) -> StoreError {
    StoreError::Database(match e {
        managed::PoolError::Backend(e) => e,
        managed::PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
        _ => sqlx::Error::PoolClosed,
    })
}

pub struct PostgresStore {
    options: PgConnectOptions,
    settings: PoolSettings,
    pool: Pool,
}

impl PostgresStore {
    pub fn new(url: &str, settings: PoolSettings) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .options([("TimeZone", "UTC")])
            .application_name("whatsapp-gateway");
        let timeout = Some(settings.acquire_timeout);
        let pool = Pool::builder(Connector {
            options: options.clone(),
        })
        .max_size(settings.max_connections as usize)
        .timeouts(managed::Timeouts {
            wait: timeout,
            create: timeout,
            recycle: timeout,
        })
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Database(sqlx::Error::Configuration(e.into())))?;
        Ok(PostgresStore {
            options,
            settings,
            pool,
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

    async fn conn(&self) -> Result<Conn, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn open(&self, id: i64) -> Result<Box<dyn SessionHandle>, StoreError> {
        Ok(Box::new(PostgresSession {
            conn: Some(self.conn().await?),
            id,
            broken: false,
            lock_held: false,
            in_transaction: false,
        }))
    }

    async fn apply_owed(&self, id: i64, session_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(APPLY_OWED)
            .bind(id)
            .bind(session_id)
            .execute(&mut *conn)
            .await;
        Ok(settle(conn, done)?.rows_affected() > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let done = sqlx::query("SELECT 1").execute(&mut *conn).await;
        settle(conn, done).map(drop)
    }
}

struct PostgresSession {
    /// `None` only while being dropped.
    conn: Option<Conn>,
    id: i64,
    /// A statement failed on `conn`: it is closed, not reused.
    broken: bool,
    /// The session's lock may be held by `conn`: set before it is asked for, cleared once it
    /// is known not to be held.
    lock_held: bool,
    /// A transaction may be open on `conn`: set before `BEGIN`, cleared after `COMMIT`.
    in_transaction: bool,
}

impl PostgresSession {
    /// Runs `sql` (statements separated by `;`) as one simple query, one round trip, and
    /// returns the rows of each statement.
    async fn run(&mut self, sql: &str) -> Result<Vec<Vec<PgRow>>, StoreError> {
        let conn = self
            .conn
            .as_mut()
            .ok_or(StoreError::Database(sqlx::Error::PoolClosed))?;
        let mut results = conn.fetch_many(sql);
        let (mut statements, mut rows) = (Vec::new(), Vec::new());
        loop {
            match results.try_next().await {
                Ok(Some(Either::Left(_done))) => statements.push(std::mem::take(&mut rows)),
                Ok(Some(Either::Right(row))) => rows.push(row),
                Ok(None) => return Ok(statements),
                Err(e) => {
                    self.broken = true;
                    return Err(e.into());
                }
            }
        }
    }
}

/// The first row of statement `n` of what [`PostgresSession::run`] returned, if any.
fn first_row(statements: &[Vec<PgRow>], n: usize) -> Option<&PgRow> {
    statements.get(n)?.first()
}

/// That row as a [`Session`].
fn session(statements: &[Vec<PgRow>], n: usize) -> Result<Option<Session>, StoreError> {
    Ok(first_row(statements, n)
        .map(Session::from_row)
        .transpose()?)
}

#[async_trait]
impl SessionHandle for PostgresSession {
    async fn find(&mut self, try_lock: bool) -> Result<Found, StoreError> {
        let id = self.id;
        if !try_lock {
            let rows = self.run(&format!("EXECUTE gateway_find({id})")).await?;
            return Ok(Found {
                row: session(&rows, 0)?,
                locked: false,
            });
        }
        self.lock_held = true;
        let rows = self
            .run(&format!(
                "EXECUTE gateway_try_lock({id}); EXECUTE gateway_find({id})"
            ))
            .await?;
        self.lock_held = first_row(&rows, 0)
            .map(|row| row.try_get::<bool, _>(0))
            .transpose()?
            .unwrap_or(false);
        Ok(Found {
            row: session(&rows, 1)?,
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
        session(&rows, 1)
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
        session(&rows, 1)
    }
}

/// A handle dropped still holding the lock (a refusal, an error, a timeout) must give it back
/// before its connection serves anyone else, or the lock would stay with the pool: a task of
/// its own releases it, or the connection is closed if it is broken.
impl Drop for PostgresSession {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.broken {
            drop(Conn::take(conn));
            return;
        }
        if !(self.lock_held || self.in_transaction) {
            return;
        }
        let sql = if self.in_transaction {
            "ROLLBACK; SELECT pg_advisory_unlock_all()"
        } else {
            "SELECT pg_advisory_unlock_all()"
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to release it on (the process is exiting): closing releases it.
            drop(Conn::take(conn));
            return;
        };
        let (mut conn, id) = (conn, self.id);
        runtime.spawn(async move {
            let done = conn.execute(sql).await;
            if let Err(error) = settle(conn, done) {
                tracing::warn!(id, %error, "releasing the disconnect lock failed; connection closed");
            }
        });
    }
}
