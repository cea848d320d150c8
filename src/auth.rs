//! Forward auth for the native route. Served by Next.js, the route sat behind the app's
//! middleware; served here it would skip it. With `auth.mode: forward`, the gateway first
//! asks an auth URL (typically the app's own session endpoint) with the client's `Cookie`
//! and `Authorization`: 2xx lets the request through, any other answer goes back to the
//! client as it is, and an unreachable auth service is 503, never a pass. Nothing is cached.

use bytes::Bytes;
use http::HeaderValue;
use std::time::Duration;

/// Most of an auth answer the gateway relays.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug)]
pub enum Decision {
    Allow,
    /// Relay this answer to the client.
    Deny {
        status: u16,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
    /// The auth service could not be asked or did not answer.
    Unavailable,
}

pub struct ForwardAuth {
    client: reqwest::Client,
    url: String,
}

impl ForwardAuth {
    pub fn new(url: &str, timeout: Duration) -> Result<ForwardAuth, reqwest::Error> {
        Ok(ForwardAuth {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            url: url.to_owned(),
        })
    }

    pub async fn check(
        &self,
        cookie: Option<&HeaderValue>,
        authorization: Option<&HeaderValue>,
        request_id: &str,
    ) -> Decision {
        let mut request = self
            .client
            .get(&self.url)
            .header("x-request-id", request_id);
        if let Some(v) = cookie {
            request = request.header(http::header::COOKIE, v.clone());
        }
        if let Some(v) = authorization {
            request = request.header(http::header::AUTHORIZATION, v.clone());
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "auth service unreachable");
                return Decision::Unavailable;
            }
        };
        let status = response.status();
        if status.is_success() {
            return Decision::Allow;
        }
        let content_type = response.headers().get(http::header::CONTENT_TYPE).cloned();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) | Err(_) => {
                    tracing::warn!("auth service answer too large or broken off");
                    return Decision::Unavailable;
                }
                Ok(None) => break,
            }
        }
        Decision::Deny {
            status: status.as_u16(),
            content_type,
            body: Bytes::from(body),
        }
    }
}
