//! A fake WhatsApp orchestrator: a real HTTP/1.1 server on loopback, written on raw TCP so it
//! can misbehave exactly (resets, hangs, trickles). The session_id in the path picks the
//! behaviour by its prefix; every request is recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

pub struct FakeOrchestrator {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The success body the fake sends for `ok*` sessions.
pub fn ok_body(session_id: &str) -> String {
    format!(
        r#"{{"success":true,"message":"Sesión desconectada correctamente","session":{{"id":"{session_id}","n":1.5e3}}}}"#
    )
}

impl FakeOrchestrator {
    pub async fn start() -> FakeOrchestrator {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, recorded).await;
                });
            }
        });
        FakeOrchestrator { addr, calls, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls whose path names this session id (raw, as sent).
    pub fn calls_for(&self, session_id: &str) -> usize {
        let want = format!("/{session_id}/disconnect");
        self.calls()
            .iter()
            .filter(|c| c.path.ends_with(&want))
            .count()
    }
}

impl Drop for FakeOrchestrator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, calls: Arc<Mutex<Vec<Recorded>>>) -> std::io::Result<()> {
    // Read the head (bounded), then any Content-Length body.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let path = request_line.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let content_length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < content_length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        have += n;
    }
    calls.lock().unwrap().push(Recorded {
        method,
        path: path.clone(),
        headers,
    });

    // `/.../sessions/{sid}/disconnect`: the segment before `disconnect`.
    let sid = path.rsplit('/').nth(1).unwrap_or("").to_owned();
    let json = "application/json";
    let respond = |status: &str, ctype: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let reply = if sid.starts_with("ok") {
        respond("200 OK", json, &ok_body(&sid))
    } else if sid.starts_with("created") {
        respond("201 Created", json, r#"{"success":true}"#)
    } else if sid.starts_with("hang") {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return Ok(());
    } else if sid.starts_with("trickle") {
        let body = r#"{"success":true,"message":"lento"}"#;
        stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {json}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
        for b in body.bytes() {
            stream.write_all(&[b]).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return Ok(());
    } else if sid.starts_with("reset") {
        reset(stream)?;
        return Ok(());
    } else if sid.starts_with("midreset") {
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"success\":")
            .await?;
        reset(stream)?;
        return Ok(());
    } else if sid.starts_with("html500") {
        respond(
            "500 Internal Server Error",
            "text/html",
            "<html><body>Internal error at 10.0.0.7</body></html>",
        )
    } else if sid.starts_with("empty503") {
        respond("503 Service Unavailable", "text/plain", "")
    } else if sid.starts_with("text200") {
        respond("200 OK", "text/plain", "OK")
    } else if sid.starts_with("array200") {
        respond("200 OK", json, r#"[{"success":true}]"#)
    } else if sid.starts_with("big200") {
        let filler = "x".repeat(2 * 1024 * 1024);
        respond(
            "200 OK",
            json,
            &format!(r#"{{"success":true,"pad":"{filler}"}}"#),
        )
    } else if sid.starts_with("json500err") {
        respond(
            "500 Internal Server Error",
            json,
            r#"{"success":false,"error":"Sesión inexistente en el orquestador","message":"ignorado"}"#,
        )
    } else if sid.starts_with("json500msg") {
        respond(
            "500 Internal Server Error",
            json,
            r#"{"success":false,"message":"Solo mensaje"}"#,
        )
    } else if sid.starts_with("json500none") {
        respond("500 Internal Server Error", json, r#"{"success":false}"#)
    } else if sid.starts_with("json404") {
        respond("404 Not Found", json, r#"{"error":"Session not found"}"#)
    } else if sid.starts_with("false200") {
        respond(
            "200 OK",
            json,
            r#"{"success":false,"error":"No se pudo desconectar"}"#,
        )
    } else if sid.starts_with("nosuccess200") {
        respond("200 OK", json, r#"{"message":"hecho"}"#)
    } else if sid.starts_with("html404") {
        respond(
            "404 Not Found",
            "text/html",
            "<html><body>Not Found</body></html>",
        )
    } else if sid.starts_with("empty400") {
        respond("400 Bad Request", json, "")
    } else if sid.starts_with("msg400") {
        respond(
            "400 Bad Request",
            json,
            r#"{"message":"Solicitud inválida"}"#,
        )
    } else if sid.starts_with("slow2s") {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        respond("200 OK", json, &ok_body(&sid))
    } else if sid.starts_with("slow") {
        tokio::time::sleep(Duration::from_millis(300)).await;
        respond("200 OK", json, &ok_body(&sid))
    } else {
        respond("200 OK", json, &ok_body(&sid))
    };
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// Closes with a TCP RST (SO_LINGER 0) instead of a FIN.
#[allow(deprecated)] // set_linger blocks on drop only with a non-zero linger
fn reset(stream: TcpStream) -> std::io::Result<()> {
    stream.set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}
