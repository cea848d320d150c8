//! `POST /api/whatsapp_sessions/{id}/disconnect`, CONTRACT.md top to bottom:
//! id → row → status → session_id → orchestrator → update.
//!
//! Plain async Rust over the two traits ([`SessionStore`], [`Orchestrator`]); nothing here
//! knows about Pingora.

use crate::durable::Durable;
use crate::journal::Journal;
use crate::locks::KeyedLocks;
use crate::metrics;
use crate::orchestrator::{Failure, Orchestrator, Outcome};
use crate::reply::Reply;
use crate::store::{Session, SessionHandle, SessionStore};
use http::StatusCode;
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const MSG_SUCCESS: &str = "Sesión desconectada exitosamente";
pub const MSG_UPDATE_WARNING: &str =
    "La sesión se desconectó en el orquestador, pero no se pudo actualizar su estado en la base de datos";

/// What the route needs from the outside world.
pub struct Deps {
    pub store: Arc<dyn SessionStore>,
    pub orchestrator: Arc<dyn Orchestrator>,
    /// In-process queue per session id, in front of the store's own lock.
    pub locks: Arc<KeyedLocks>,
    /// Where an update that failed after the orchestrator said yes is owed.
    pub journal: Arc<Journal>,
    /// Runs each disconnect to the end, whatever the request does.
    pub durable: Arc<Durable>,
    /// How long the row update after the orchestrator call may take before it is journaled.
    pub write_timeout: Duration,
}

/// Every way the route says no, with its status and exact message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("ID inválido")]
    InvalidId,
    #[error("Sesión de WhatsApp no encontrada")]
    NotFound,
    #[error("La sesión no está conectada")]
    NotConnected { status: Option<String> },
    #[error("La sesión no tiene session_id del orquestador")]
    NoSessionId,
    #[error("Error al comunicarse con el orquestador de WhatsApp")]
    Unreachable(Failure),
    #[error("Error al desconectar sesión en el orquestador")]
    Refused(String),
    #[error("Base de datos no disponible")]
    DatabaseUnavailable,
    /// A bug (a panicked task), never an expected path.
    #[error("Error interno del servidor")]
    Internal,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::InvalidId | Rejection::NotConnected { .. } | Rejection::NoSessionId => {
                StatusCode::BAD_REQUEST
            }
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::Unreachable(_) => StatusCode::BAD_GATEWAY,
            Rejection::Refused(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn details(&self) -> Option<String> {
        match self {
            Rejection::NotConnected { status } => Some(format!(
                "Estado actual: {}",
                status.as_deref().unwrap_or("null")
            )),
            Rejection::Unreachable(failure) => Some(failure.to_string()),
            Rejection::Refused(message) => Some(message.clone()),
            _ => None,
        }
    }

    /// The `outcome` label of `gateway_native_outcomes_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::InvalidId => "invalid_id",
            Rejection::NotFound => "not_found",
            Rejection::NotConnected { .. } => "not_connected",
            Rejection::NoSessionId => "no_session_id",
            Rejection::Unreachable(_) => "orchestrator_unreachable",
            Rejection::Refused(_) => "orchestrator_refused",
            Rejection::DatabaseUnavailable => "database_unavailable",
            Rejection::Internal => "internal",
        }
    }

    pub fn reply(&self) -> Reply {
        #[derive(Serialize)]
        struct Body {
            success: bool,
            error: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<String>,
        }
        Reply::json(
            self.status(),
            &Body {
                success: false,
                error: self.to_string(),
                details: self.details(),
            },
        )
    }
}

/// The 200 answer.
#[derive(Debug, Serialize)]
pub struct Disconnected {
    pub success: bool,
    pub message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<&'static str>,
    pub data: DisconnectedData,
}

#[derive(Debug, Serialize)]
pub struct DisconnectedData {
    pub session_id: String,
    pub orchestrator_disconnect: Box<RawValue>,
    pub updated_session: Option<Session>,
}

/// Step 1: the id segment, percent-decoded, must be ASCII digits with a value in 1..=i64::MAX.
pub fn parse_id(segment: &str) -> Result<i64, Rejection> {
    let decoded = percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| Rejection::InvalidId)?;
    if decoded.is_empty() || !decoded.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::InvalidId);
    }
    match decoded.parse::<i64>() {
        Ok(id) if id >= 1 => Ok(id),
        _ => Err(Rejection::InvalidId),
    }
}

/// Answers one disconnect request; `segment` is the raw `{id}` path segment, `request_id`
/// is passed on to the orchestrator. A valid id is handled on the durable runtime, to the
/// end, whatever happens to the request meanwhile.
pub async fn handle(segment: &str, request_id: &str, deps: &Arc<Deps>) -> Reply {
    let outcome = match parse_id(segment) {
        Ok(id) => {
            let (request_id, task_deps) = (request_id.to_owned(), Arc::clone(deps));
            deps.durable
                .run(async move { disconnect(id, &request_id, &task_deps).await })
                .await
                .unwrap_or(Err(Rejection::Internal))
        }
        Err(rejection) => Err(rejection),
    };
    match outcome {
        Ok(done) => {
            metrics::count_native_outcome(if done.warning.is_some() {
                "disconnected_write_owed"
            } else {
                "disconnected"
            });
            Reply::json(StatusCode::OK, &done)
        }
        Err(rejection) => {
            metrics::count_native_outcome(rejection.label());
            rejection.reply()
        }
    }
}

/// Steps 2 to 7 for session `id`.
async fn disconnect(id: i64, request_id: &str, deps: &Deps) -> Result<Disconnected, Rejection> {
    // Two locks keep disconnects of one session apart: the in-process one (so requests of
    // this gateway queue here, not on database connections) and the store's (across
    // gateways). Usually both are free, and the first read takes them on its way if the row
    // can be disconnected; most rejections (unknown id, not connected) take neither.
    let started = Instant::now();
    let queued = deps.locks.try_lock(id);
    let mut session = deps.store.open(id).await.map_err(database_unavailable)?;
    let found = session.find(queued.is_some()).await;
    metrics::observe_database("read", found.is_ok(), started.elapsed().as_secs_f64());
    let found = found.map_err(database_unavailable)?;
    let mut session_id = check(found.row)?;
    // Held to the end of this function, as is the store's lock. Unless the first read took
    // both, someone else holds a lock of this session, here or in another gateway: wait for
    // the in-process one without a database connection (a busy session would drain the
    // pool), then for the store's, then read the row again: whoever held them may have
    // disconnected it.
    let _queued = match queued {
        Some(queued) if found.locked => queued,
        Some(queued) => {
            session_id = lock_and_read(session.as_mut()).await?;
            queued
        }
        None => {
            drop(session);
            let queued = deps.locks.lock(id).await;
            session = deps.store.open(id).await.map_err(database_unavailable)?;
            session_id = lock_and_read(session.as_mut()).await?;
            queued
        }
    };

    // Step 5. From here on the orchestrator's answer is written to the row or journaled.
    let started = Instant::now();
    let outcome = deps.orchestrator.disconnect(&session_id, request_id).await;
    let elapsed = started.elapsed().as_secs_f64();
    let orchestrator_disconnect = match outcome {
        Outcome::Disconnected(body) => {
            metrics::observe_orchestrator("disconnected", elapsed);
            body
        }
        Outcome::Refused(message) => {
            metrics::observe_orchestrator("refused", elapsed);
            return Err(Rejection::Refused(message));
        }
        Outcome::Unreachable(failure) => {
            metrics::observe_orchestrator("unreachable", elapsed);
            return Err(Rejection::Unreachable(failure));
        }
    };
    let started = Instant::now();
    let written = tokio::time::timeout(deps.write_timeout, session.mark_disconnected()).await;
    metrics::observe_database(
        "update",
        matches!(written, Ok(Ok(_))),
        started.elapsed().as_secs_f64(),
    );
    let (updated_session, warning) = match written {
        Ok(Ok(updated)) => (updated, None),
        Ok(Err(e)) => {
            tracing::error!(id, session_id, error = %e,
                "disconnected at the orchestrator, but the row update failed");
            owe(&deps.journal, id, &session_id).await;
            (None, Some(MSG_UPDATE_WARNING))
        }
        Err(_) => {
            tracing::error!(id, session_id, timeout = ?deps.write_timeout,
                "disconnected at the orchestrator, but the row update timed out");
            owe(&deps.journal, id, &session_id).await;
            (None, Some(MSG_UPDATE_WARNING))
        }
    };
    Ok(Disconnected {
        success: true,
        message: MSG_SUCCESS,
        warning,
        data: DisconnectedData {
            session_id,
            orchestrator_disconnect,
            updated_session,
        },
    })
}

/// Waits for the store's lock of the session, then checks 2 to 4 on the row read under it.
async fn lock_and_read(session: &mut dyn SessionHandle) -> Result<String, Rejection> {
    let started = Instant::now();
    let row = session.lock().await;
    metrics::observe_database(
        "lock_and_read",
        row.is_ok(),
        started.elapsed().as_secs_f64(),
    );
    check(row.map_err(database_unavailable)?)
}

/// Checks 2 to 4 on the row as read: its session_id when it can be disconnected.
fn check(row: Option<Session>) -> Result<String, Rejection> {
    let row = row.ok_or(Rejection::NotFound)?;
    if row.status.as_deref() != Some("connected") {
        return Err(Rejection::NotConnected { status: row.status });
    }
    match row.session_id {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(Rejection::NoSessionId),
    }
}

/// Journals the owed write (fsync'd before the answer goes out).
async fn owe(journal: &Arc<Journal>, id: i64, session_id: &str) {
    match journal.owe_async(id, session_id).await {
        Ok(entry) => {
            tracing::warn!(
                id,
                session_id,
                seq = entry.seq,
                "owed write journaled; it will be retried"
            )
        }
        Err(e) => tracing::error!(id, session_id, error = %e, journal = %journal.path().display(),
            "could not journal the owed write: the row stays connected until fixed by hand"),
    }
}

fn database_unavailable(e: crate::store::StoreError) -> Rejection {
    tracing::error!(error = %e, "database unavailable");
    Rejection::DatabaseUnavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in [
            ("1", 1),
            ("007", 7),
            ("%31%32", 12),
            ("9223372036854775807", i64::MAX),
            ("2147483648", 2_147_483_648),
        ] {
            assert_eq!(parse_id(ok.0), Ok(ok.1), "{}", ok.0);
        }
        for bad in [
            "abc",
            "0",
            "000",
            "-1",
            "+1",
            "1.5",
            "1e3",
            "12abc",
            " 1",
            "%201",
            "%20",
            "1%00",
            "%ff",
            "99999999999999999999",
            "9223372036854775808",
            "١",
        ] {
            assert_eq!(parse_id(bad), Err(Rejection::InvalidId), "{bad}");
        }
    }

    #[test]
    fn rejection_bodies_are_byte_exact() {
        let body = |r: Rejection| String::from_utf8(r.reply().body.to_vec()).unwrap();
        assert_eq!(
            body(Rejection::InvalidId),
            r#"{"success":false,"error":"ID inválido"}"#
        );
        assert_eq!(
            body(Rejection::NotConnected {
                status: Some("disconnected".into())
            }),
            r#"{"success":false,"error":"La sesión no está conectada","details":"Estado actual: disconnected"}"#
        );
        assert_eq!(
            body(Rejection::Unreachable(Failure::Timeout(30000))),
            r#"{"success":false,"error":"Error al comunicarse con el orquestador de WhatsApp","details":"Tiempo de espera agotado al contactar al orquestador (30000 ms)"}"#
        );
        assert_eq!(Rejection::DatabaseUnavailable.status(), 503);
    }
}
