//! `GET /metrics` over HTTP/1.1, served by hyper.
//!
//! hyper because a root process should not parse the network with a
//! hand-written parser when a maintained, fuzzed one exists. Bounded where:
//! the request head in size ([`MAX_HEAD`]: hyper answers 431) and in time
//! ([`HEAD_TIMEOUT`]: hyper's timer ends the connection, the 408 is written
//! here), the whole exchange ([`CONNECTION_TIMEOUT`]) and the connections at
//! once ([`MAX_CONNECTIONS`], more are closed at once) here. No keep-alive,
//! no request body read, one route: a slow or hostile client costs at most a
//! few small buffers; capture runs on its own task and never waits for this
//! one.

use std::{
    convert::Infallible,
    future::{poll_fn, Future},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderMap, HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

use super::{endpoint::is_transient, Metrics};

/// Longest request head accepted (Prometheus sends a few hundred bytes);
/// also hyper's read buffer, whose smallest allowed size this is.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head (slowloris).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one connection may last, head and answer together.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a client whose head took longer than [`HEAD_TIMEOUT`] is told
/// (hyper only closes the connection).
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\nConnection: close\r\n\r\nrequest too slow\n";

/// One answer, boxed: hyper wants an `Unpin` future to hand the socket back.
type Answer = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// Serves `metrics` on `listener` until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, metrics: Metrics) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let http = Arc::new(builder());
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
        let (http, metrics) = (http.clone(), metrics.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = timeout(CONNECTION_TIMEOUT, exchange(&http, stream, metrics)).await;
        });
    }
}

/// hyper's HTTP/1.1 server with the bounds above.
fn builder() -> http1::Builder {
    let mut http = http1::Builder::new();
    http.keep_alive(false)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    http
}

/// One connection: one request, one answer, then closed.
async fn exchange(
    http: &http1::Builder,
    stream: TcpStream,
    metrics: Metrics,
) -> std::io::Result<()> {
    let service = service_fn(move |req| -> Answer { Box::pin(answer(req, metrics.clone())) });
    let mut conn = http.serve_connection(TokioIo::new(stream), service);
    // Polled without hyper's shutdown so that the socket comes back, still
    // open, when the head timed out.
    let served = poll_fn(|cx| conn.poll_without_shutdown(cx)).await;
    let mut stream = conn.into_parts().io.into_inner();
    if served.as_ref().is_err_and(hyper::Error::is_timeout) {
        stream.write_all(REQUEST_TIMEOUT).await?;
    }
    stream.shutdown().await
}

async fn answer(
    req: Request<Incoming>,
    metrics: Metrics,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return Ok(res);
    }
    if req.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "metrics are at /metrics\n"));
    }
    let openmetrics = wants_openmetrics(req.headers());
    // Reading the kernel's fold table takes syscalls: off the async workers.
    let Ok(page) = tokio::task::spawn_blocking(move || metrics.render(openmetrics)).await else {
        // A failed scrape (up=0), not an empty page that would read as
        // every series gone.
        return Ok(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rendering failed\n",
        ));
    };
    let kind = if openmetrics { OPENMETRICS } else { TEXT };
    Ok(page_of(StatusCode::OK, kind, page))
}

/// Prometheus asks for OpenMetrics first; curl and promtool take text.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    })
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    page_of(status, "text/plain; charset=utf-8", body.into())
}

fn page_of(status: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_accepted() {
        let mut h = HeaderMap::new();
        assert!(!wants_openmetrics(&h));
        h.append(ACCEPT, HeaderValue::from_static("text/plain"));
        assert!(!wants_openmetrics(&h));
        h.append(
            ACCEPT,
            HeaderValue::from_static("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        );
        assert!(wants_openmetrics(&h));
    }

    #[test]
    fn the_timeout_answer_is_well_formed() {
        let text = std::str::from_utf8(REQUEST_TIMEOUT).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 "));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn hyper_takes_the_head_bound() {
        // hyper panics below its minimum buffer; the bound must stay above.
        builder();
    }
}
