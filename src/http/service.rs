//! The listening service around the proxy, tuned for many idle keep-alive connections.
//!
//! Pingora keeps a whole request's state alive while an HTTP/1 connection waits for its next
//! request: the proxy future, the session and a 4 KiB header buffer, plus a 64 KiB L4 read
//! buffer per connection, and a per-connection future sized for its HTTP/2 branch. Measured,
//! that was about 90 KB of RSS per idle connection, against nginx's 1.3 KB. [`H1First`] runs
//! the HTTP/1 keep-alive loop itself and, between requests on a plaintext connection, waits
//! for the next byte holding nothing but the socket; the per-request machinery ([`LeanHttp`],
//! which wraps Pingora's `HttpProxy`) is only built once a request is arriving. Plain
//! listeners also read without the L4 buffer (the HTTP/1 parser has its own), which saves a
//! copy per request.
//!
//! Every HTTP/1 connection (plain or TLS) is wrapped once in a [`Guarded`] stream that
//! enforces the listener's head limits and holds its slot in the connection count.
//! HTTP/2 connections take Pingora's own path unchanged.

use super::guard::{Guarded, HeadLimits};
use crate::config::ListenerLimits;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::{HttpProxy, ProxyHttp};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub struct LeanHttp<SV: ProxyHttp> {
    inner: Arc<HttpProxy<SV>>,
    options: Option<HttpServerOptions>,
    limits: ListenerLimits,
    admission: Admission,
    /// HTTP/2 streams the fast path can serve (see [`super::fast`]).
    fast: Option<Arc<super::fast::FastPath>>,
}

/// The listener's connection limit and request-head guard, applied once per HTTP/1
/// connection by whichever path sees it first.
#[derive(Clone)]
pub struct Admission {
    /// Open HTTP/1 connections on this listener, for `max_connections`.
    open: Arc<AtomicUsize>,
    max: Option<usize>,
    head: HeadLimits,
    name: Arc<str>,
}

impl Admission {
    pub fn new(name: &str, limits: &ListenerLimits) -> Admission {
        Admission {
            open: Arc::new(AtomicUsize::new(0)),
            max: limits.max_connections,
            head: HeadLimits {
                max_request_line: limits.max_request_line,
                max_header_size: limits.max_header_size,
                max_header_count: limits.max_header_count,
                header_timeout: limits.header_timeout,
            },
            name: name.into(),
        }
    }

    /// Wrap a new connection's stream, or refuse it when the listener is full.
    pub async fn admit(&self, mut stream: Stream) -> Option<Box<Guarded>> {
        let n = self.open.fetch_add(1, Relaxed) + 1;
        if let Some(max) = self.max {
            if n > max {
                self.open.fetch_sub(1, Relaxed);
                log::warn!(
                    "{}: refusing a connection: {max} open (max_connections)",
                    self.name
                );
                use tokio::io::AsyncWriteExt;
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n")
                    .await;
                let _ = stream.flush().await;
                return None;
            }
        }
        Some(Box::new(Guarded::new(
            stream,
            self.head,
            Some(self.open.clone()),
        )))
    }
}

impl<SV> LeanHttp<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    <SV as ProxyHttp>::CTX: Send + Sync,
{
    pub fn new(
        name: &str,
        proxy: SV,
        conf: &Arc<pingora_core::server::configuration::ServerConf>,
        options: Option<HttpServerOptions>,
        limits: ListenerLimits,
    ) -> Self {
        let mut p = HttpProxy::new(proxy, conf.clone());
        // The inner proxy reads the per-request options (CONNECT, request limits) itself.
        p.server_options = options.clone();
        p.handle_init_modules();
        LeanHttp {
            inner: Arc::new(p),
            options,
            admission: Admission::new(name, &limits),
            limits,
            fast: None,
        }
    }

    /// Serve plain HTTP/2 streams on the fast path too.
    pub fn set_fast(&mut self, fast: Option<Arc<super::fast::FastPath>>) {
        self.fast = fast;
    }

    /// The admission shared with [`H1First`].
    pub fn admission(&self) -> Admission {
        self.admission.clone()
    }
}

/// Outcome of waiting on an idle connection.
enum Idle {
    Ready,
    Closed,
}

/// Wait for the next request on an idle plaintext connection. What arrives is read here, a
/// small first piece on the stack, and handed to the guard to be read again: one read for a
/// short request (a peek first would cost a second system call per request).
async fn wait_for_request(g: &mut Guarded, wait: Duration) -> Idle {
    use tokio::io::AsyncReadExt;
    if g.has_pending() {
        return Idle::Ready;
    }
    let mut first = [0u8; 128];
    tokio::select! {
        biased;
        r = g.inner_mut().read(&mut first) => match r {
            Ok(0) | Err(_) => Idle::Closed,
            Ok(n) => {
                g.unread(&first[..n]);
                Idle::Ready
            }
        },
        _ = tokio::time::sleep(wait) => Idle::Closed,
        // Not at shutdown itself: a request may be on its way (see lifecycle::Draining).
        _ = crate::lifecycle::idle_connections_closing() => Idle::Closed,
    }
}

#[async_trait]
impl<SV> HttpServerApp for LeanHttp<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    <SV as ProxyHttp>::CTX: Send + Sync,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let session = match session {
            ServerSession::H1(h1) => {
                let reuses = h1.get_keepalive_reuses_remaining();
                let mut stream = h1.into_inner();
                if stream.as_any().downcast_ref::<Guarded>().is_none() {
                    stream = self.admission.admit(stream).await?;
                }
                // The idle wait for this request happened in `H1First`, before this future
                // (and Pingora's request future) was allocated.
                if let Some(g) = stream.as_any().downcast_ref::<Guarded>() {
                    g.arm();
                }
                let mut s = ServerSession::new_http1(stream);
                s.set_keepalive(if *shutdown.borrow() {
                    None
                } else {
                    Some(self.limits.keepalive_timeout.as_secs())
                });
                s.set_keepalive_reuses_remaining(reuses);
                s
            }
            ServerSession::H2(mut h2) => {
                if let Some(fast) = &self.fast {
                    if fast.serve_h2(&mut h2).await {
                        return None;
                    }
                }
                ServerSession::H2(h2)
            }
            other => other,
        };
        self.inner.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.options.as_ref()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

/// The listening app for HTTP listeners: HTTP/1 connections run a small loop of our own, and
/// only HTTP/2 (by ALPN or h2c) takes Pingora's generic path.
///
/// Pingora's blanket `ServerApp` for an HTTP app keeps one future per connection that is
/// sized for its HTTP/2 branch as well, a few KiB that every idle HTTP/1 keep-alive connection
/// would carry. Here the HTTP/2 path is boxed separately, so an idle HTTP/1 connection holds
/// only this loop's small state and the request future of the app below (itself waiting,
/// lean, in [`LeanHttp`]).
pub struct H1First<A> {
    inner: Arc<A>,
    /// Keep-alive timeout: the longest a connection may wait for its next request.
    idle_wait: Duration,
    admission: Admission,
    /// Plain reverse-proxy requests, served without Pingora's per-request machinery.
    fast: Option<Arc<super::fast::FastPath>>,
}

impl<A> H1First<A> {
    pub fn new(
        inner: A,
        limits: &ListenerLimits,
        admission: Admission,
        fast: Option<Arc<super::fast::FastPath>>,
    ) -> H1First<A> {
        H1First {
            inner: Arc::new(inner),
            idle_wait: limits.keepalive_timeout,
            admission,
            fast,
        }
    }
}

impl<A> H1First<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// One request on Pingora's general path.
    async fn general(
        self: &Arc<Self>,
        g: Box<Guarded>,
        persistent: Option<pingora_core::apps::HttpPersistentSettings>,
        shutdown: &ShutdownWatch,
    ) -> Option<(
        Box<Guarded>,
        Option<pingora_core::apps::HttpPersistentSettings>,
    )> {
        let opts = self.inner.server_options();
        let mut session = ServerSession::new_http1(g);
        match persistent {
            Some(p) => p.apply_to_session(&mut session),
            None => {
                session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
                session
                    .set_keepalive_reuses_remaining(opts.and_then(|o| o.keepalive_request_limit));
            }
        }
        let (next, p) = self
            .inner
            .process_new_http(session, shutdown)
            .await?
            .consume();
        Some((next.into_any().downcast::<Guarded>().ok()?, p))
    }
}

#[async_trait]
impl<A> pingora_core::apps::ServerApp for H1First<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        use pingora_core::protocols::ALPN;
        let opts = self.inner.server_options();
        let h2c = opts.is_some_and(|o| o.h2c) && stream.get_ssl_digest().is_none();
        let custom = opts.is_some_and(|o| o.force_custom);
        let h1 = matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1));
        if h2c || custom || !h1 {
            // Pingora's own path (h2c preface detection, HTTP/2, custom protocols), boxed so
            // its size is paid only by the connections that take it.
            return Box::pin(pingora_core::apps::ServerApp::process_new(
                &self.inner,
                stream,
                shutdown,
            ))
            .await;
        }
        // Between requests a plaintext connection waits here, holding only the socket; TLS
        // streams buffer inside OpenSSL, so a socket peek says nothing about them.
        let plain = stream.get_ssl_digest().is_none();
        let mut g = self.admission.admit(stream).await?;
        let mut conn = self.fast.as_ref().map(|_| super::fast::Conn::new(&g));
        let mut persistent: Option<pingora_core::apps::HttpPersistentSettings> = None;
        loop {
            if plain {
                match wait_for_request(&mut g, self.idle_wait).await {
                    Idle::Ready => {}
                    Idle::Closed => return None,
                }
            }
            if let (Some(fast), Some(conn)) = (&self.fast, conn.as_mut()) {
                let draining = *shutdown.borrow() || crate::lifecycle::draining();
                let wait = (!plain).then_some(self.idle_wait);
                // Boxed: the request's state is allocated while it runs, not carried by
                // every idle connection.
                match Box::pin(fast.serve(&mut g, conn, draining, wait, shutdown)).await {
                    super::fast::Outcome::KeepAlive => continue,
                    super::fast::Outcome::Close => return None,
                    super::fast::Outcome::Fallback => {}
                }
            }
            // Boxed: Pingora's session (about a kilobyte) and its request future exist only
            // while such a request runs.
            let (next, p) = Box::pin(self.general(g, persistent.take(), shutdown)).await?;
            g = next;
            persistent = p;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}
