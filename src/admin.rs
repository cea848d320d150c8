//! The admin listener (default 127.0.0.1:9090): `/metrics` (Prometheus text format),
//! `/healthz` (liveness: the process serves) and `/readyz` (readiness: the database and the
//! upstream answer). Kept off the public listener.

use crate::store::SessionStore;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct Admin {
    pub store: Arc<dyn SessionStore>,
    pub upstreams: Vec<SocketAddr>,
    /// Bound on each readiness probe.
    pub probe_timeout: Duration,
}

impl Admin {
    /// `None` when ready, else the reason.
    async fn not_ready(&self) -> Option<&'static str> {
        let db = tokio::time::timeout(self.probe_timeout, self.store.ping()).await;
        if !matches!(db, Ok(Ok(()))) {
            return Some("database unreachable");
        }
        // Ready while at least one upstream accepts connections.
        for upstream in &self.upstreams {
            let connect =
                tokio::time::timeout(self.probe_timeout, tokio::net::TcpStream::connect(upstream))
                    .await;
            if matches!(connect, Ok(Ok(_))) {
                return None;
            }
        }
        Some("upstream unreachable")
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let json = "application/json";
        match session.req_header().uri.path() {
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                crate::metrics::render(),
            ),
            "/healthz" => respond(StatusCode::OK, json, br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => match self.not_ready().await {
                None => respond(StatusCode::OK, json, br#"{"status":"ready"}"#.to_vec()),
                Some(reason) => respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json,
                    format!(r#"{{"status":"not ready","reason":"{reason}"}}"#).into_bytes(),
                ),
            },
            _ => respond(
                StatusCode::NOT_FOUND,
                json,
                br#"{"error":"not found"}"#.to_vec(),
            ),
        }
    }
}
