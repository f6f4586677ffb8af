//! The metrics endpoint: `GET /metrics` over plain HTTP/1.1 on the address
//! the operator picks (usually loopback, scraped by Prometheus). Anything
//! else is a 404; a request head is read with a size and time bound, and
//! at most [`MAX_CONNECTIONS`] are served at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

use super::metrics::Metrics;

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Longest a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves the metrics until the task is dropped.
/// Returns the bound address (useful with port 0) and the task.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "metrics accept");
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &metrics).await {
                    debug!(%peer, error = %e, "metrics request");
                }
                drop(permit);
            });
        }
    });
    Ok((bound, task))
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let complete = matches!(read, Ok(Ok(true)));
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let (status, kind, body) = if !complete {
        ("400 Bad Request", "text/plain", "bad request\n".to_owned())
    } else if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?") {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".to_owned(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        // A server that kept the connection open fails the test, not hangs it.
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            s.read_to_string(&mut out),
        )
        .await
        .expect("the server closes the connection after its answer")
        .unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_nothing_else() {
        let m = Arc::new(Metrics::default());
        Metrics::add(&m.deposits, 3);
        let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), m)
            .await
            .unwrap();
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("meshchat_relay_deposits_total 3\n"));
        let missing = get(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let garbage = get(addr, &[b'x'; 9000]).await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        task.abort();
    }
}
