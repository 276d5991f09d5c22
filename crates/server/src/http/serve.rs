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
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
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
///
/// The header timeout is kept here rather than by hyper, whose
/// `header_read_timeout` also runs while a kept-alive connection waits for
/// its next request (closing it after the header timeout instead of the
/// idle timeout). Here it runs from connecting until the first request's
/// headers are in, then from the first byte of each later request.
async fn connection<I>(io: I, app: Router, limits: ServeLimits, mut shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let phase = Arc::new(Phase::default());
    let io = Tracked { inner: io, started, last: last.clone(), phase: phase.clone(), tail: [0; 3] };
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    // Wakes when the connection could first have been idle for the whole
    // timeout, not on a tick: 10,000 agent streams cost no timer work
    // between their messages.
    let mut deadline = tokio::time::Instant::now() + limits.idle_timeout;
    let origin = tokio::time::Instant::from_std(started);
    let mut headers_due = Some(origin + limits.header_timeout);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(headers_due.unwrap_or(deadline)), if headers_due.is_some() => {
                match phase.headers_since() {
                    Some(since) if started.elapsed().saturating_sub(since) >= limits.header_timeout => {
                        tracing::debug!("request headers overdue; connection closed");
                        return;
                    }
                    Some(since) => headers_due = Some(origin + since + limits.header_timeout),
                    None => headers_due = None,
                }
            }
            _ = phase.began.notified(), if headers_due.is_none() => {
                if let Some(since) = phase.headers_since() {
                    headers_due = Some(origin + since + limits.header_timeout);
                }
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

/// Where a connection is in its current request, as seen from its bytes:
/// reading a request's headers (since when), or not.
struct Phase {
    /// [`Phase::HEADERS`], [`Phase::BUSY`] (headers in, until the response
    /// starts) or [`Phase::IDLE`] (waiting for the next request).
    state: AtomicU8,
    /// Milliseconds from the connection's start to the request's first byte.
    since: AtomicU64,
    /// Told when a request's first byte arrives.
    began: tokio::sync::Notify,
}

impl Default for Phase {
    fn default() -> Phase {
        // A new connection owes its first request's headers from the start.
        Phase { state: AtomicU8::new(Phase::HEADERS), since: AtomicU64::new(0), began: tokio::sync::Notify::new() }
    }
}

impl Phase {
    const IDLE: u8 = 0;
    const HEADERS: u8 = 1;
    const BUSY: u8 = 2;

    /// When the request whose headers are being read began, if one is.
    fn headers_since(&self) -> Option<Duration> {
        (self.state.load(Ordering::Acquire) == Phase::HEADERS).then(|| Duration::from_millis(self.since.load(Ordering::Acquire)))
    }
}

/// An I/O stream that notes when bytes last moved (milliseconds since
/// `started`) and where the current request is ([`Phase`]).
struct Tracked<I> {
    inner: I,
    started: Instant,
    last: Arc<AtomicU64>,
    phase: Arc<Phase>,
    /// The last bytes read, to see a header terminator split across reads.
    tail: [u8; 3],
}

impl<I> Tracked<I> {
    fn touch(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn read_bytes(&mut self, bytes: &[u8]) {
        let state = &self.phase.state;
        if state.load(Ordering::Acquire) == Phase::IDLE {
            self.phase.since.store(self.started.elapsed().as_millis() as u64, Ordering::Release);
            state.store(Phase::HEADERS, Ordering::Release);
            self.tail = [0; 3];
            self.phase.began.notify_one();
        }
        if state.load(Ordering::Acquire) == Phase::HEADERS {
            let mut window = self.tail.to_vec();
            window.extend_from_slice(&bytes[..bytes.len().min(64 * 1024)]);
            if window.windows(4).any(|w| w == b"\r\n\r\n") {
                state.store(Phase::BUSY, Ordering::Release);
            }
        }
        let mut joined = self.tail.to_vec();
        joined.extend_from_slice(&bytes[bytes.len().saturating_sub(3)..]);
        let n = joined.len();
        self.tail.copy_from_slice(&joined[n - 3..]);
    }

    /// A response started (an interim `100 Continue` does not count): the
    /// next bytes read begin the next request.
    fn wrote(&self, first: &[u8]) {
        if !first.starts_with(b"HTTP/1.1 1") {
            let _ = self.phase.state.compare_exchange(Phase::BUSY, Phase::IDLE, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
            let read = buf.filled()[before..].to_vec();
            self.read_bytes(&read);
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
            self.wrote(data);
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
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            self.wrote(first);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
