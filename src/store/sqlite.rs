//! SQLite store: the embedded default. One process owns the file, so the disconnect lock is
//! the in-process keyed lock the route already takes; this store adds none of its own.

use super::{Found, PoolSettings, Session, SessionHandle, SessionStore, StoreError, COLUMNS};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::OnceCell;

static SELECT: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM whatsapp_sessions WHERE id = ?1"));
static MARK_DISCONNECTED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE whatsapp_sessions SET status = 'disconnected', \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1 RETURNING {COLUMNS}"
    )
});

static APPLY_OWED: &str = "UPDATE whatsapp_sessions SET status = 'disconnected', \
    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
    WHERE id = ?1 AND status = 'connected' AND session_id = ?2";

pub struct SqliteStore {
    options: SqliteConnectOptions,
    settings: PoolSettings,
    /// Built on first use, inside the runtime that serves requests (a pool is bound to the
    /// runtime it was built in).
    pool: OnceCell<SqlitePool>,
}

impl SqliteStore {
    pub fn new(url: &str, settings: PoolSettings) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        Ok(SqliteStore {
            options,
            settings,
            pool: OnceCell::new(),
        })
    }

    /// Creates the database file (and its folder) if missing and applies `migrations/sqlite`.
    /// Called once at start, before the server runs; the pool it uses is closed afterwards.
    pub async fn migrate(&self) -> Result<(), anyhow::Error> {
        if let Some(dir) = self.options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("cannot create database folder {}: {e}", dir.display())
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(self.options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        pool.close().await;
        Ok(())
    }

    async fn pool(&self) -> &SqlitePool {
        self.pool
            .get_or_init(|| async {
                SqlitePoolOptions::new()
                    .max_connections(self.settings.max_connections)
                    .acquire_timeout(self.settings.acquire_timeout)
                    .connect_lazy_with(self.options.clone())
            })
            .await
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn open(&self, id: i64) -> Result<Box<dyn SessionHandle>, StoreError> {
        Ok(Box::new(SqliteSession {
            pool: self.pool().await.clone(),
            id,
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

struct SqliteSession {
    pool: SqlitePool,
    id: i64,
}

impl SqliteSession {
    async fn read(&self) -> Result<Option<Session>, StoreError> {
        Ok(sqlx::query_as(&SELECT)
            .bind(self.id)
            .fetch_optional(&self.pool)
            .await?)
    }
}

/// The lock is the route's in-process one (see the module comment), which the caller holds
/// when it asks to lock: `find` and `lock` only read.
#[async_trait]
impl SessionHandle for SqliteSession {
    async fn find(&mut self, try_lock: bool) -> Result<Found, StoreError> {
        Ok(Found {
            row: self.read().await?,
            locked: try_lock,
        })
    }

    async fn lock(&mut self) -> Result<Option<Session>, StoreError> {
        self.read().await
    }

    async fn mark_disconnected(&mut self) -> Result<Option<Session>, StoreError> {
        Ok(sqlx::query_as(&MARK_DISCONNECTED)
            .bind(self.id)
            .fetch_optional(&self.pool)
            .await?)
    }
}
