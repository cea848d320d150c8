//! The WhatsApp orchestrator: `POST {base}{sessions_path}/{session_id}/disconnect`.
//!
//! The outcome is an enum the route maps to CONTRACT.md's answers: a JSON object that
//! accepts (200 from the gateway), a JSON object that refuses (500), or no usable answer (502).

use async_trait::async_trait;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::time::Duration;

/// What the orchestrator made of a disconnect request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 2xx and a JSON object with `success: true`: the body exactly as it sent it.
    Disconnected(Box<RawValue>),
    /// A JSON object that refuses (non-2xx, or `success` not exactly `true`): its message.
    Refused(String),
    /// No usable answer.
    Unreachable(Failure),
}

/// Why there was no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("Error de conexión al orquestador")]
    Connection,
    #[error("Tiempo de espera agotado al contactar al orquestador ({0} ms)")]
    Timeout(u64),
    #[error("Respuesta inválida del orquestador")]
    InvalidResponse,
}

#[async_trait]
pub trait Orchestrator: Send + Sync {
    /// Asks the orchestrator to disconnect `session_id`; `request_id` goes along as
    /// `X-Request-Id` so both sides' logs can be joined.
    async fn disconnect(&self, session_id: &str, request_id: &str) -> Outcome;
}

/// Characters left as they are in the path segment: exactly those JavaScript's
/// `encodeURIComponent` leaves, so the orchestrator sees the path the legacy route sent.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The most of a response body the gateway reads; more is an invalid answer.
pub const MAX_BODY: usize = 1024 * 1024;

pub struct HttpOrchestrator {
    client: reqwest::Client,
    /// `{url}{sessions_path}`, without a trailing slash.
    sessions_url: String,
    timeout_ms: u64,
}

impl HttpOrchestrator {
    /// `base_url` may carry a path prefix (`http://host:3000/wa`), which is kept.
    pub fn new(
        base_url: &str,
        sessions_path: &str,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("whatsapp-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpOrchestrator {
            client,
            sessions_url: format!(
                "{}/{}",
                base_url.trim_end_matches('/'),
                sessions_path.trim_matches('/')
            )
            .trim_end_matches('/')
            .to_owned(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        })
    }

    pub fn disconnect_url(&self, session_id: &str) -> String {
        format!(
            "{}/{}/disconnect",
            self.sessions_url,
            utf8_percent_encode(session_id, SEGMENT)
        )
    }

    fn failure(&self, e: &reqwest::Error) -> Failure {
        if e.is_timeout() {
            Failure::Timeout(self.timeout_ms)
        } else {
            Failure::Connection
        }
    }

    async fn call(
        &self,
        session_id: &str,
        request_id: &str,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), Failure> {
        let mut response = self
            .client
            .post(self.disconnect_url(session_id))
            .header(reqwest::header::ACCEPT, "application/json")
            .header("x-request-id", request_id)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "orchestrator request failed");
                self.failure(&e)
            })?;
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        tracing::warn!("orchestrator answer larger than {MAX_BODY} bytes");
                        return Err(Failure::InvalidResponse);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok((status, body)),
                Err(e) => {
                    tracing::warn!(error = %e, "orchestrator answer broke off");
                    return Err(self.failure(&e));
                }
            }
        }
    }
}

#[async_trait]
impl Orchestrator for HttpOrchestrator {
    async fn disconnect(&self, session_id: &str, request_id: &str) -> Outcome {
        match self.call(session_id, request_id).await {
            Ok((status, body)) => judge(status.is_success(), &body),
            Err(failure) => Outcome::Unreachable(failure),
        }
    }
}

/// CONTRACT.md step 5, given whether the status was 2xx and the body.
pub fn judge(success_status: bool, body: &[u8]) -> Outcome {
    let (Ok(Value::Object(object)), Ok(raw)) = (
        serde_json::from_slice::<Value>(body),
        serde_json::from_slice::<Box<RawValue>>(body),
    ) else {
        return Outcome::Unreachable(Failure::InvalidResponse);
    };
    if success_status && object.get("success") == Some(&Value::Bool(true)) {
        Outcome::Disconnected(raw)
    } else {
        Outcome::Refused(refusal_message(&object))
    }
}

/// The object's `error` if a non-empty string, else its `message` (likewise), else a default.
fn refusal_message(object: &Map<String, Value>) -> String {
    ["error", "message"]
        .iter()
        .find_map(|key| match object.get(*key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "Error desconocido del orquestador".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    impl PartialEq for Outcome {
        fn eq(&self, other: &Self) -> bool {
            match (self, other) {
                (Outcome::Disconnected(a), Outcome::Disconnected(b)) => a.get() == b.get(),
                (Outcome::Refused(a), Outcome::Refused(b)) => a == b,
                (Outcome::Unreachable(a), Outcome::Unreachable(b)) => a == b,
                _ => false,
            }
        }
    }

    fn raw(s: &str) -> Outcome {
        Outcome::Disconnected(RawValue::from_string(s.to_owned()).unwrap())
    }

    #[test]
    fn judging_answers() {
        let ok = br#"{"success":true,"message":"bye"}"#;
        assert_eq!(judge(true, ok), raw(r#"{"success":true,"message":"bye"}"#));
        // Kept as sent: number forms, key order, duplicate keys, inner spacing.
        let odd = r#"{"z":1.5e3, "success":true,"big":12345678901234567890}"#;
        assert_eq!(judge(true, format!(" {odd}\n").as_bytes()), raw(odd));
        assert_eq!(
            judge(false, ok),
            Outcome::Refused("bye".into()),
            "non-2xx refuses even with success:true"
        );
        for (body, msg) in [
            (&br#"{"success":false,"error":"E","message":"M"}"#[..], "E"),
            (br#"{"success":false,"error":"","message":"M"}"#, "M"),
            (br#"{"success":"true","message":"M"}"#, "M"),
            (br#"{"message":"M"}"#, "M"),
            (br#"{"success":false}"#, "Error desconocido del orquestador"),
            (br#"{"error":42}"#, "Error desconocido del orquestador"),
        ] {
            assert_eq!(judge(true, body), Outcome::Refused(msg.into()));
        }
        for body in [
            &b""[..],
            b"<html>502</html>",
            b"[1,2]",
            b"\"x\"",
            b"null",
            b"{",
        ] {
            assert_eq!(
                judge(true, body),
                Outcome::Unreachable(Failure::InvalidResponse)
            );
            assert_eq!(
                judge(false, body),
                Outcome::Unreachable(Failure::InvalidResponse)
            );
        }
    }

    #[test]
    fn urls_keep_the_prefix_and_encode_the_segment() {
        let o = HttpOrchestrator::new("http://h:3000/wa/", "/sessions", Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            o.disconnect_url("a b/c?d#é"),
            "http://h:3000/wa/sessions/a%20b%2Fc%3Fd%23%C3%A9/disconnect"
        );
        let o = HttpOrchestrator::new("http://h:3000", "sessions", Duration::from_secs(1)).unwrap();
        assert_eq!(
            o.disconnect_url("s_1-x.y~"),
            "http://h:3000/sessions/s_1-x.y~/disconnect"
        );
    }
}
