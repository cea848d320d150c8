//! `Reply`: the one way a native answer leaves the gateway. Always JSON, always with a
//! Content-Length (an HTTP/1 answer without one would be close-delimited).

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    /// `Allow` header value, set on 405 answers.
    pub allow: Option<&'static str>,
    pub body: Bytes,
}

impl Reply {
    pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

    /// A JSON answer. Serialising the contract's own types cannot fail; if it ever did, the
    /// client gets a plain 500 JSON body rather than a panic.
    pub fn json(status: StatusCode, body: &impl Serialize) -> Reply {
        match serde_json::to_vec(body) {
            Ok(bytes) => Reply {
                status,
                content_type: Self::JSON,
                allow: None,
                body: Bytes::from(bytes),
            },
            Err(e) => {
                tracing::error!(error = %e, "could not serialise a reply");
                Reply {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    content_type: Self::JSON,
                    allow: None,
                    body: Bytes::from_static(br#"{"success":false,"error":"Error interno"}"#),
                }
            }
        }
    }

    /// 405 for any method but POST on the native route.
    pub fn method_not_allowed() -> Reply {
        Reply {
            status: StatusCode::METHOD_NOT_ALLOWED,
            content_type: Self::JSON,
            allow: Some("POST"),
            body: Bytes::from_static(
                "{\"success\":false,\"error\":\"Método no permitido\"}".as_bytes(),
            ),
        }
    }

    /// 503 when forward auth is on and the auth service cannot be asked.
    pub fn auth_unavailable() -> Reply {
        Reply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            content_type: Self::JSON,
            allow: None,
            body: Bytes::from_static(
                "{\"success\":false,\"error\":\"Servicio de autenticación no disponible\"}"
                    .as_bytes(),
            ),
        }
    }
}
