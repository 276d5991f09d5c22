//! The HTTP server loop, on hyper directly rather than `axum::serve`, for
//! the limits a server facing the network needs:
//!
//! - a bound on concurrent connections (beyond it, new ones wait in the
//!   kernel's accept queue until a connection closes);
//! - a header-read timeout: a client that opens a connection and never
//!   finishes its request headers (slowloris) is cut off;
//! - an idle timeout: a keep-alive connection with no traffic is closed
//!   (gracefully: a request in progress, such as a long poll, finishes);
//! - the TLS handshake done per connection, under the header timeout, so a
//!   slow handshake never holds up the accept loop.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest time from connecting (or from the first byte of a request)
    /// to the end of its headers; also bounds the TLS handshake.
    pub header_timeout: Duration,
    /// A connection with no traffic this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits { max_connections: 4096, header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(90) }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets open
/// connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut connections = JoinSet::new();
    let mut warned = false;
    loop {
        while connections.try_join_next().is_some() {}
        if permits.available_permits() == 0 && !warned {
            tracing::warn!(limit = limits.max_connections, "connection limit reached; new connections wait");
            warned = true;
        }
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        if permits.available_permits() > 0 {
            warned = false;
        }
        let _ = stream.set_nodelay(true);
        let (app, acceptor, stop) = (app.clone(), acceptor.clone(), shutdown.clone());
        connections.spawn(async move {
            let _permit = permit;
            match acceptor {
                None => connection(stream, app, limits, stop).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => connection(tls, app, limits, stop).await,
                    Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// One connection, closed when idle too long or when the server stops.
async fn connection<I>(io: I, app: Router, limits: ServeLimits, mut shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Tracked { inner: io, started, last: last.clone() };
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    // Wakes when the connection could first have been idle for the whole
    // timeout, not on a tick: 10,000 agent streams cost no timer work
    // between their messages.
    let mut deadline = tokio::time::Instant::now() + limits.idle_timeout;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline), if !closing => {
                let idle = started.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if idle >= limits.idle_timeout {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else {
                    deadline = tokio::time::Instant::now() + (limits.idle_timeout - idle);
                }
            }
            _ = stopped(&mut shutdown), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// An I/O stream that notes when bytes last moved (milliseconds since `started`).
struct Tracked<I> {
    inner: I,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<I> Tracked<I> {
    fn touch(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
