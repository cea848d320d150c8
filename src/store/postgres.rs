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

use super::{LockedSession, PoolSettings, Session, SessionStore, StoreError};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};
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
static MARK_DISCONNECTED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE whatsapp_sessions SET status = 'disconnected', updated_at = now() \
         WHERE id = $1 RETURNING {CAST_COLUMNS}"
    )
});
const APPLY_OWED: &str =
    "UPDATE whatsapp_sessions SET status = 'disconnected', updated_at = now() \
    WHERE id = $1 AND status::text = 'connected' AND session_id::text = $2";
/// `BEGIN` and the lock in one round trip (one simple query). One 64-bit advisory key per
/// session id, in a namespace of its own so it does not collide with advisory locks the
/// legacy app may take on bare ids. `id` is an integer, so formatting it in is safe.
fn begin_and_lock(id: i64) -> String {
    format!(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('whatsapp-gateway/disconnect/{id}', 0))"
    )
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
        let tx = self.pool().await.begin_with(begin_and_lock(id)).await?;
        Ok(Box::new(PostgresSession { tx: Some(tx), id }))
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
    /// `None` once committed.
    tx: Option<Transaction<'static, Postgres>>,
    id: i64,
}

impl PostgresSession {
    fn tx(&mut self) -> Result<&mut Transaction<'static, Postgres>, StoreError> {
        self.tx
            .as_mut()
            .ok_or(StoreError::Database(sqlx::Error::PoolClosed))
    }
}

#[async_trait]
impl LockedSession for PostgresSession {
    async fn fetch(&mut self) -> Result<Option<Session>, StoreError> {
        let id = self.id;
        let tx = self.tx()?;
        Ok(sqlx::query_as(&SELECT)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?)
    }

    async fn mark_disconnected(&mut self) -> Result<Option<Session>, StoreError> {
        let id = self.id;
        let row = sqlx::query_as(&MARK_DISCONNECTED)
            .bind(id)
            .fetch_optional(&mut **self.tx()?)
            .await?;
        if let Some(tx) = self.tx.take() {
            tx.commit().await?;
        }
        Ok(row)
    }
}
