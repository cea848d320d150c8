//! The Pingora layer: routes each request, writes native replies, and forwards the rest to
//! the Next.js upstream with the usual X-Forwarded-* headers, a request id, an access-log
//! line and metrics. No business logic here.

use crate::auth::{Decision, ForwardAuth};
use crate::config::UpstreamTimeouts;
use crate::disconnect::{self, Deps};
use crate::metrics::{self, RouteKind};
use crate::reply::Reply;
use crate::routes::{self, Route};
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use pingora::apps::HttpServerApp;
use pingora::prelude::*;
use pingora::ErrorSource;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, LoadBalancer};
use pingora_proxy::FailToProxy;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Request bodies on the native route are read and dropped up to this size, so the
/// connection can be reused; past it the answer closes the connection.
pub const MAX_DRAIN: usize = 1024 * 1024;

const X_REQUEST_ID: &str = "x-request-id";

pub struct Gateway {
    /// Where proxied requests go.
    pub upstreams: Upstreams,
    pub deps: Arc<Deps>,
    /// `false` when `routes.disconnect: proxy`: the route goes to Next.js like any other.
    pub native_disconnect: bool,
    pub auth: Option<ForwardAuth>,
    pub access_log: bool,
    pub request_ids: Arc<RequestIds>,
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    route: RouteKind,
    request_id: HeaderValue,
    /// Upstreams this request failed to connect to (failover skips them).
    failed: Vec<SocketAddr>,
}

/// The Next.js upstream(s).
pub enum Upstreams {
    /// One address: its peer (with timeouts) is built once and cloned per request.
    One(Box<HttpPeer>),
    /// Several: round robin over the healthy ones (`pingora-load-balancing`, TCP health
    /// checks run as a background service); a failed connect moves on to the next one.
    Balanced {
        lb: Arc<LoadBalancer<RoundRobin>>,
        timeouts: UpstreamTimeouts,
    },
}

impl Upstreams {
    fn peer(&self, failed: &[SocketAddr]) -> Result<HttpPeer> {
        match self {
            Upstreams::One(peer) => Ok(HttpPeer::clone(peer)),
            Upstreams::Balanced { lb, timeouts } => {
                let untried = |b: &Backend| b.addr.as_inet().is_none_or(|a| !failed.contains(a));
                let backend = lb
                    .select_with(b"", 256, |b, healthy| healthy && untried(b))
                    // Nobody healthy and untried: try an untried one anyway.
                    .or_else(|| lb.select_with(b"", 256, |b, _| untried(b)))
                    .ok_or_else(|| {
                        Error::explain(ErrorType::ConnectNoRoute, "no upstream left to try")
                    })?;
                let addr = backend.addr.as_inet().copied().ok_or_else(|| {
                    Error::explain(ErrorType::ConnectNoRoute, "upstream is not inet")
                })?;
                Ok(upstream_peer(addr, timeouts))
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            route: RouteKind::Proxied,
            request_id: HeaderValue::from_static(""),
            failed: Vec::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = self.request_ids.of(session.req_header());
        if !self.native_disconnect {
            return Ok(false);
        }
        let Route::Disconnect(segment) = routes::classify(session.req_header().uri.path()) else {
            return Ok(false);
        };
        ctx.route = RouteKind::Native;
        let segment = segment.to_owned();
        let method = session.req_header().method.clone();
        let keep_alive = drain_body(session).await?;
        let request_id = ctx.request_id.to_str().unwrap_or_default();
        let reply = match self.authorize(session, request_id).await {
            Some(refusal) => refusal,
            None if method == Method::POST => {
                disconnect::handle(&segment, request_id, &self.deps).await
            }
            None => {
                metrics::count_native_outcome("method_not_allowed");
                Reply::method_not_allowed()
            }
        };
        if !keep_alive {
            session.set_keepalive(None);
        }
        write_reply(session, &reply, &ctx.request_id, method == Method::HEAD).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.upstreams.peer(&ctx.failed).map(Box::new)
    }

    /// With several upstreams, a connect failure is retried on the next one (nothing was
    /// sent yet, so any method may be retried).
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Upstreams::Balanced { lb, .. } = &self.upstreams {
            if let Some(addr) = peer._address.as_inet() {
                ctx.failed.push(*addr);
            }
            if ctx.failed.len() < lb.backends().get_backend().len() {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        add_forwarded_headers(session, upstream_request)?;
        // An HTTP/1.0 request may come without Host; it goes upstream as HTTP/1.1, which
        // requires one: an empty Host, as RFC 9112 section 3.2 says for a target without
        // an authority.
        if !upstream_request.headers.contains_key(header::HOST) {
            upstream_request.insert_header(header::HOST, "")?;
        }
        upstream_request.insert_header(X_REQUEST_ID, ctx.request_id.clone())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if upstream_response.status != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(upstream_response);
        }
        // HTTP/1.0 clients cannot read chunked bodies: send the body as it comes and end it
        // by closing the connection (RFC 9112 section 6.1).
        if session.req_header().version == http::Version::HTTP_10
            && upstream_response
                .headers
                .contains_key(header::TRANSFER_ENCODING)
        {
            upstream_response.remove_header(&header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        upstream_response.insert_header(X_REQUEST_ID, ctx.request_id.clone())
    }

    /// Upstream failures get a short plain-text answer: 504 when the upstream was too slow
    /// (connect, read or write timeout), 502 otherwise. Same mapping as Pingora's default for
    /// everything else.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
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
        if e.esource() == &ErrorSource::Upstream {
            metrics::count_upstream_error(code);
        }
        if code > 0 {
            let body = error_body(code);
            let mut header = match ResponseHeader::build(code, Some(4)) {
                Ok(h) => h,
                Err(_) => ResponseHeader::build(500, Some(4)).expect("500 is a status"),
            };
            let _ = header.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
            let _ = header.set_content_length(body.len());
            let _ = header.insert_header(header::CACHE_CONTROL, "private, no-store");
            let _ = header.insert_header(X_REQUEST_ID, ctx.request_id.clone());
            if let Err(write_error) = session
                .write_error_response(header, Bytes::from_static(body.as_bytes()))
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

    /// A client hanging up mid-answer is not the gateway's error: no ERROR line for it (the
    /// access log still records the request).
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::WriteError | ErrorType::ReadError
            )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        metrics::count_request(ctx.route, status);
        if self.access_log {
            let req = session.req_header();
            tracing::info!(
                target: "access",
                method = %req.method,
                uri = %req.uri,
                status,
                route = ctx.route.as_str(),
                duration_ms = ctx.started.elapsed().as_secs_f64() * 1000.0,
                bytes = session.body_bytes_sent(),
                request_id = ctx.request_id.to_str().unwrap_or_default(),
            );
        }
    }
}

impl Gateway {
    /// Forward auth, when configured: `None` lets the request through, `Some(reply)` is
    /// the answer to send instead.
    async fn authorize(&self, session: &Session, request_id: &str) -> Option<Reply> {
        let auth = self.auth.as_ref()?;
        let headers = &session.req_header().headers;
        match auth
            .check(
                headers.get(header::COOKIE),
                headers.get(header::AUTHORIZATION),
                request_id,
            )
            .await
        {
            Decision::Allow => None,
            Decision::Deny {
                status,
                content_type,
                body,
            } => {
                metrics::count_native_outcome("auth_denied");
                Some(Reply {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                    content_type: content_type.unwrap_or(Reply::JSON),
                    allow: None,
                    body,
                })
            }
            Decision::Unavailable => {
                metrics::count_native_outcome("auth_unavailable");
                Some(Reply::auth_unavailable())
            }
        }
    }
}

/// The body of the gateway's own answer to an upstream failure (both paths).
pub fn error_body(code: u16) -> &'static str {
    match code {
        502 => "502 Bad Gateway: the upstream app did not answer\n",
        504 => "504 Gateway Timeout: the upstream app took too long\n",
        400 => "400 Bad Request\n",
        _ => "Gateway error\n",
    }
}

/// Request ids: an incoming `X-Request-Id` is kept (if it is short, visible ASCII);
/// otherwise one is made from a random per-process prefix and a counter, unique across
/// replicas without a random draw per request.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        RequestIds {
            prefix: format!("{:016x}", h.finish()),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    pub fn of(&self, req: &RequestHeader) -> HeaderValue {
        if let Some(v) = req.headers.get(X_REQUEST_ID) {
            if crate::h1::usable_request_id(v.as_bytes()) {
                return v.clone();
            }
        }
        let mut id = Vec::with_capacity(40);
        self.write_next(&mut id);
        HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
    }

    /// Appends a new id (`<prefix>-<counter in hex>`) to `out`.
    pub fn write_next(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{}-{n:x}", self.prefix);
    }
}

/// Wraps the Pingora proxy app to change one thing at shutdown. Pingora, once the listener
/// is closed (SIGTERM, or SIGQUIT when handing over to a new process), drops every connection
/// that is waiting for a request head: idle keep-alive connections, and connections accepted
/// a moment earlier whose request is still in flight, which the client then sees reset. This
/// wrapper lets those connections be served for the grace period first: a request arriving
/// on them is answered (with `Connection: close`, as Pingora does during shutdown), and only
/// then are the remaining idle ones dropped.
pub struct GracefulClose<A> {
    pub inner: Arc<A>,
    pub grace: Duration,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for GracefulClose<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: pingora::protocols::http::ServerSession,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::apps::ReusedHttpStream> {
        self.inner.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&pingora::apps::HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        tokio::time::sleep(self.grace).await;
        self.inner.http_cleanup().await;
    }
}

/// The upstream peer, built once at start.
pub fn upstream_peer(addr: std::net::SocketAddr, timeouts: &UpstreamTimeouts) -> HttpPeer {
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

async fn write_reply(
    session: &mut Session,
    reply: &Reply,
    request_id: &HeaderValue,
    head: bool,
) -> Result<()> {
    let mut header = ResponseHeader::build(reply.status, Some(5))?;
    header.insert_header(header::CONTENT_TYPE, reply.content_type.clone())?;
    header.set_content_length(reply.body.len())?;
    if let Some(allow) = reply.allow {
        header.insert_header(header::ALLOW, allow)?;
    }
    header.insert_header(X_REQUEST_ID, request_id.clone())?;
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

/// Removes the upstream hop's own fields from a response (RFC 9110 section 7.6.1): those
/// its `Connection` names, `Keep-Alive`, `Proxy-Connection`, and `Connection` itself (Pingora
/// writes the client hop's own).
fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    // `keep-alive` and `close`, the usual tokens, name no field: only other tokens are
    // collected (so the common `Connection: keep-alive` allocates nothing here).
    let named: Vec<http::HeaderName> = resp
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|token| http::HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        resp.remove_header(&name);
    }
    resp.remove_header(&header::CONNECTION);
    resp.remove_header("keep-alive");
    resp.remove_header("proxy-connection");
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
