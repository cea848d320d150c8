//! The Pingora layer: routes each request, writes native replies, and forwards the rest to
//! the Next.js upstream with the usual X-Forwarded-* headers. No business logic here.

use crate::disconnect::{self, Deps};
use crate::reply::Reply;
use crate::routes::{self, Route};
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method};
use pingora::prelude::*;
use pingora::ErrorSource;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::FailToProxy;
use std::sync::Arc;

/// Request bodies on the native route are read and dropped up to this size, so the
/// connection can be reused; past it the answer closes the connection.
pub const MAX_DRAIN: usize = 1024 * 1024;

pub struct Gateway {
    /// The Next.js upstream with its timeouts; cloned for each proxied request.
    pub upstream: HttpPeer,
    pub deps: Arc<Deps>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let Route::Disconnect(segment) = routes::classify(session.req_header().uri.path()) else {
            return Ok(false);
        };
        let segment = segment.to_owned();
        let method = session.req_header().method.clone();
        let keep_alive = drain_body(session).await?;
        let reply = if method == Method::POST {
            disconnect::handle(&segment, &self.deps).await
        } else {
            Reply::method_not_allowed()
        };
        if !keep_alive {
            session.set_keepalive(None);
        }
        write_reply(session, &reply, method == Method::HEAD).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.upstream.clone()))
    }

    /// Upstream failures get a short plain-text answer: 504 when the upstream was too slow
    /// (connect, read or write timeout), 502 otherwise. Same mapping as Pingora's default for
    /// everything else.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut ()) -> FailToProxy {
        let code = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(code)) => *code,
            (
                ErrorSource::Upstream,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) => 504,
            (ErrorSource::Upstream, _) => 502,
            (
                ErrorSource::Downstream,
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ) => 0, // the client is gone
            (ErrorSource::Downstream, _) => 400,
            _ => 500,
        };
        if code > 0 {
            let body = match code {
                502 => "502 Bad Gateway: the upstream app did not answer\n",
                504 => "504 Gateway Timeout: the upstream app took too long\n",
                400 => "400 Bad Request\n",
                _ => "Gateway error\n",
            };
            if let Err(write_error) = session
                .respond_error_with_body(code, Bytes::from_static(body.as_bytes()))
                .await
            {
                tracing::debug!(error = %write_error, "could not send the error answer");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        add_forwarded_headers(session, upstream_request)
    }
}

/// The upstream peer, built once at start.
pub fn upstream_peer(
    addr: std::net::SocketAddr,
    timeouts: &crate::config::UpstreamTimeouts,
) -> HttpPeer {
    use std::time::Duration;
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_millis(timeouts.connect_ms));
    peer.options.read_timeout = Some(Duration::from_millis(timeouts.read_ms));
    peer.options.write_timeout = Some(Duration::from_millis(timeouts.write_ms));
    peer
}

/// Reads and drops the request body up to [`MAX_DRAIN`]. `Ok(true)` when all of it was read
/// (the connection can be kept), `Ok(false)` when it was larger.
async fn drain_body(session: &mut Session) -> Result<bool> {
    if session.is_body_empty() {
        return Ok(true);
    }
    if session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        session.write_continue_response().await?;
    }
    let mut read = 0usize;
    while let Some(chunk) = session.read_request_body().await? {
        read += chunk.len();
        if read > MAX_DRAIN {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn write_reply(session: &mut Session, reply: &Reply, head: bool) -> Result<()> {
    let mut header = ResponseHeader::build(reply.status, Some(4))?;
    header.insert_header(header::CONTENT_TYPE, Reply::CONTENT_TYPE)?;
    header.set_content_length(reply.body.len())?;
    if let Some(allow) = reply.allow {
        header.insert_header(header::ALLOW, allow)?;
    }
    session
        .write_response_header(Box::new(header), head)
        .await?;
    if !head {
        session
            .write_response_body(Some(reply.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// `X-Forwarded-For` gets the client address appended (nginx's `$proxy_add_x_forwarded_for`);
/// `X-Forwarded-Proto` and `X-Forwarded-Host` are set to what this hop saw.
fn add_forwarded_headers(session: &Session, req: &mut RequestHeader) -> Result<()> {
    if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
        let ip = client.ip().to_string();
        let previous: Vec<&[u8]> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let value = if previous.is_empty() {
            Bytes::from(ip)
        } else {
            let mut joined = previous.join(&b", "[..]);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip.as_bytes());
            Bytes::from(joined)
        };
        req.insert_header("x-forwarded-for", value.as_ref())?;
    }
    req.insert_header("x-forwarded-proto", "http")?;
    let host = req.headers.get(header::HOST).cloned();
    match host {
        Some(host) => req.insert_header("x-forwarded-host", host)?,
        None => {
            req.remove_header("x-forwarded-host");
        }
    }
    Ok(())
}
