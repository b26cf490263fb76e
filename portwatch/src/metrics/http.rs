//! A minimal HTTP/1.1 responder for `GET /metrics`, on tokio's listener.
//!
//! Hand-written because the job is one read-only page: no keep-alive, no
//! request bodies, no routing. What a web framework would add is attack
//! surface on a root process. Every connection is bounded in size
//! ([`MAX_REQUEST`]), time ([`READ_TIMEOUT`], [`WRITE_TIMEOUT`]) and number
//! ([`MAX_CONNECTIONS`]), so a slow or hostile client costs at most a few
//! small buffers and never a thread; capture runs on its own task and never
//! waits for this one.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

use super::{listen::is_transient, Metrics};

/// Longest request head accepted (Prometheus sends a few hundred bytes).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its whole request head (slowloris).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the whole answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `metrics` on `listener` until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, metrics: Metrics) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_transient(&e) => {
                // Let closing connections free their fds.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: closing costs nothing, queueing would cost memory.
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = answer(stream, metrics).await;
        });
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics { openmetrics: bool },
    NotFound,
    BadMethod,
    TooLarge,
    Malformed,
}

async fn answer(mut stream: TcpStream, metrics: Metrics) -> std::io::Result<()> {
    let asked = match timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(asked)) => asked,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let _ = timeout(
                WRITE_TIMEOUT,
                respond(
                    &mut stream,
                    "408 Request Timeout",
                    TEXT,
                    "request too slow\n",
                ),
            )
            .await;
            return Ok(());
        }
    };
    let response = async {
        match asked {
            Asked::Metrics { openmetrics } => {
                // Reading the kernel's fold table takes syscalls: off the
                // async workers.
                let body = tokio::task::spawn_blocking(move || metrics.render(openmetrics))
                    .await
                    .unwrap_or_default();
                let kind = if openmetrics { OPENMETRICS } else { TEXT };
                respond(&mut stream, "200 OK", kind, &body).await
            }
            Asked::NotFound => {
                respond(
                    &mut stream,
                    "404 Not Found",
                    TEXT,
                    "metrics are at /metrics\n",
                )
                .await
            }
            Asked::BadMethod => {
                respond(&mut stream, "405 Method Not Allowed", TEXT, "GET only\n").await
            }
            Asked::TooLarge => {
                respond(
                    &mut stream,
                    "431 Request Header Fields Too Large",
                    TEXT,
                    "request too large\n",
                )
                .await
            }
            Asked::Malformed => {
                respond(&mut stream, "400 Bad Request", TEXT, "bad request\n").await
            }
        }
    };
    timeout(WRITE_TIMEOUT, response)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Reads the request head (up to the blank line), at most [`MAX_REQUEST`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Asked> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Ok(Asked::TooLarge);
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(Asked::Malformed);
        }
        len += n;
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(parse(&buf[..end]));
        }
    }
}

/// The request line and the Accept header of a request head.
fn parse(head: &[u8]) -> Asked {
    let Ok(head) = std::str::from_utf8(head) else {
        return Asked::Malformed;
    };
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Malformed;
    };
    if !version.starts_with("HTTP/1.") {
        return Asked::Malformed;
    }
    if method != "GET" {
        return Asked::BadMethod;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Asked::NotFound;
    }
    // Prometheus asks for OpenMetrics first; curl and promtool take text.
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    });
    Asked::Metrics { openmetrics }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") {
            "Allow: GET\r\n"
        } else {
            ""
        }
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Asked::Metrics { openmetrics: false }
        );
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
            Asked::Metrics { openmetrics: true }
        );
        assert_eq!(parse(b"POST /metrics HTTP/1.1"), Asked::BadMethod);
        assert_eq!(parse(b"HEAD /metrics HTTP/1.1"), Asked::BadMethod);
        assert_eq!(parse(b"GET / HTTP/1.1"), Asked::NotFound);
        assert_eq!(parse(b"GET /metrics"), Asked::Malformed);
        assert_eq!(parse(b"\xff\xfe"), Asked::Malformed);
    }
}
