//! Which requests the gateway answers itself. Pure functions, table-tested.

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/api/whatsapp_sessions/{id}/disconnect`: answered natively; carries the raw `{id}` segment.
    Disconnect(&'a str),
    /// Everything else: proxied to the Next.js upstream unchanged.
    Proxied,
}

const PREFIX: &str = "/api/whatsapp_sessions/";
const SUFFIX: &str = "/disconnect";

/// Classifies a request path (without the query string). Matching is exact and case-sensitive:
/// one non-empty segment between the prefix and the suffix, no trailing slash.
pub fn classify(path: &str) -> Route<'_> {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Route::Proxied;
    };
    match rest.strip_suffix(SUFFIX) {
        Some(segment) if !segment.is_empty() && !segment.contains('/') => {
            Route::Disconnect(segment)
        }
        _ => Route::Proxied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_paths() {
        for (path, segment) in [
            ("/api/whatsapp_sessions/1/disconnect", "1"),
            ("/api/whatsapp_sessions/007/disconnect", "007"),
            ("/api/whatsapp_sessions/abc/disconnect", "abc"),
            ("/api/whatsapp_sessions/%20/disconnect", "%20"),
            ("/api/whatsapp_sessions/disconnect/disconnect", "disconnect"),
        ] {
            assert_eq!(classify(path), Route::Disconnect(segment), "{path}");
        }
    }

    #[test]
    fn proxied_paths() {
        for path in [
            "/",
            "/api/whatsapp_sessions",
            "/api/whatsapp_sessions/",
            "/api/whatsapp_sessions/1",
            "/api/whatsapp_sessions/1/connect",
            "/api/whatsapp_sessions/1/disconnect/",
            "/api/whatsapp_sessions/1/2/disconnect",
            "/api/whatsapp_sessions//disconnect",
            "/api/whatsapp_sessions/disconnect",
            "/API/whatsapp_sessions/1/disconnect",
            "/api/WhatsApp_sessions/1/disconnect",
            "/api/whatsapp_sessions/1/Disconnect",
            "//api/whatsapp_sessions/1/disconnect",
            "/api/whatsapp_sessions/1/disconnect.json",
        ] {
            assert_eq!(classify(path), Route::Proxied, "{path}");
        }
    }
}
