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
//! Every connection (plain or TLS, HTTP/1 or HTTP/2) is admitted once: it takes a slot in
//! the listener's connection count (`max_connections`), and an HTTP/1 connection is wrapped
//! in a [`Guarded`] stream that enforces the listener's head limits. HTTP/2 connections,
//! by ALPN or by the h2c preface, then run [`super::h2conn`]'s loop on Pingora's HTTP/2
//! codec; their streams are served by the lean engine where the policy lets it.

use super::guard::{GuardConf, Guarded, HeadLimits};
use super::idle::{wait_for_request, Idle};
use super::staged::Next;
use crate::config::ListenerLimits;
use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream,
};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Peek, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::{HttpProxy, ProxyHttp};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub struct LeanHttp<SV: ProxyHttp> {
    /// Swapped by a reload; each request takes the one in force when it starts.
    inner: Arc<ArcSwap<HttpProxy<SV>>>,
    options: Option<HttpServerOptions>,
    limits: ListenerLimits,
    admission: Admission,
    /// HTTP/2 streams the fast path can serve (see [`super::fast`]).
    fast: FastSwap,
    conf: Arc<pingora_core::server::configuration::ServerConf>,
}

/// The lean engine in force, shared by [`LeanHttp`] and [`H1First`].
pub type FastSwap = Arc<ArcSwapOption<super::fast::FastPath>>;

/// What a reload replaces in a listener's engines: Pingora's proxy (around the policy) and
/// the lean engine. The connection-level parts (accept loop, admission, limits) stay.
pub struct EngineSwap<SV: ProxyHttp> {
    general: Arc<ArcSwap<HttpProxy<SV>>>,
    fast: FastSwap,
    conf: Arc<pingora_core::server::configuration::ServerConf>,
    options: Option<HttpServerOptions>,
}

impl<SV> EngineSwap<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    <SV as ProxyHttp>::CTX: Send + Sync,
{
    /// Requests that start from now on use `proxy` and `fast`; those running finish on what
    /// they started with.
    pub fn install(&self, proxy: SV, fast: Option<Arc<super::fast::FastPath>>) {
        self.general
            .store(Arc::new(general(proxy, &self.conf, &self.options)));
        self.fast.store(fast);
    }

    /// The general engine in force, for the listener's HTTP/3 side (a reload swaps it for
    /// both transports).
    pub fn general_engine(&self) -> Arc<dyn GeneralEngine> {
        Arc::new(GeneralIn(self.general.clone()))
    }
}

/// The general engine, type-erased for a transport that builds its own Pingora sessions
/// (HTTP/3 streams, see `h3::session`).
#[async_trait]
pub trait GeneralEngine: Send + Sync {
    /// Run every phase for one request.
    async fn serve(&self, session: ServerSession, shutdown: &ShutdownWatch);
}

struct GeneralIn<SV: ProxyHttp>(Arc<ArcSwap<HttpProxy<SV>>>);

#[async_trait]
impl<SV> GeneralEngine for GeneralIn<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    <SV as ProxyHttp>::CTX: Send + Sync,
{
    async fn serve(&self, session: ServerSession, shutdown: &ShutdownWatch) {
        let p = self.0.load_full();
        // a session of its own kind is never reused
        let _ = p.process_new_http(session, shutdown).await;
    }
}

fn general<SV>(
    proxy: SV,
    conf: &Arc<pingora_core::server::configuration::ServerConf>,
    options: &Option<HttpServerOptions>,
) -> HttpProxy<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    <SV as ProxyHttp>::CTX: Send + Sync,
{
    let mut p = HttpProxy::new(proxy, conf.clone());
    // The inner proxy reads the per-request options (CONNECT, request limits) itself.
    p.server_options = options.clone();
    p.handle_init_modules();
    p
}

/// The listener's connection limit and request-head guard, applied once per HTTP/1
/// connection by whichever path sees it first.
#[derive(Clone)]
pub struct Admission {
    /// Open HTTP/1 connections on this listener, for `max_connections`.
    open: Arc<AtomicUsize>,
    max: Option<usize>,
    /// The head limits, the counter and the name, shared by every guard of the listener.
    guard: Arc<GuardConf>,
    name: Arc<str>,
}

impl Admission {
    /// The listener's open-connection count, for another transport of the same listener
    /// (HTTP/3) to count into, so `max_connections` covers both.
    pub fn open_connections(&self) -> Arc<AtomicUsize> {
        self.open.clone()
    }

    pub fn new(name: &str, limits: &ListenerLimits) -> Admission {
        Admission::counting(name, limits, Arc::new(AtomicUsize::new(0)))
    }

    /// As [`Self::new`], counting into `open`: the count of the listener this one replaces,
    /// whose connections stay open and count against `max_connections` here too.
    pub fn counting(name: &str, limits: &ListenerLimits, open: Arc<AtomicUsize>) -> Admission {
        let name: Arc<str> = name.into();
        let head = HeadLimits {
            max_request_line: limits.max_request_line,
            max_header_size: limits.max_header_size,
            max_header_count: limits.max_header_count,
            header_timeout: limits.header_timeout,
        };
        Admission {
            guard: Arc::new(GuardConf {
                limits: head,
                open: Some(open.clone()),
                listener: Some(name.clone()),
                one_request: limits.keepalive_requests == Some(1),
            }),
            open,
            max: limits.max_connections,
            name,
        }
    }

    /// Wrap a new connection's stream, or refuse it when the listener is full. `h1`: watch
    /// its request heads; an HTTP/2 connection only takes its slot.
    pub async fn admit_as(&self, mut stream: Stream, h1: bool) -> Option<Box<Guarded>> {
        let n = self.open.fetch_add(1, Relaxed) + 1;
        if let Some(max) = self.max {
            if n > max {
                self.open.fetch_sub(1, Relaxed);
                log::warn!(
                    "{}: refusing a connection: {max} open (max_connections)",
                    self.name
                );
                crate::observability::refused(&self.name, "max_connections");
                if h1 {
                    use tokio::io::AsyncWriteExt;
                    let a = crate::policy::answer::Answer::closing(503).retry_after(1);
                    let _ = stream.write_all(&a.h1(false, false)).await;
                    let _ = stream.flush().await;
                }
                return None;
            }
        }
        let g = Guarded::with_conf(stream, self.guard.clone());
        Some(Box::new(if h1 { g } else { g.passthrough() }))
    }

    pub async fn admit(&self, stream: Stream) -> Option<Box<Guarded>> {
        self.admit_as(stream, true).await
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
        open: Arc<AtomicUsize>,
    ) -> Self {
        let p = general(proxy, conf, &options);
        LeanHttp {
            inner: Arc::new(ArcSwap::from_pointee(p)),
            options,
            // `open`: a new count, or the count of the listener this one replaces
            admission: Admission::counting(name, &limits, open),
            limits,
            fast: Arc::new(ArcSwapOption::empty()),
            conf: conf.clone(),
        }
    }

    /// Serve plain HTTP/2 streams on the fast path too.
    pub fn set_fast(&mut self, fast: Option<Arc<super::fast::FastPath>>) {
        self.fast.store(fast);
    }

    /// The lean engine in force, for [`H1First`].
    pub fn fast(&self) -> FastSwap {
        self.fast.clone()
    }

    /// The handle a reload installs new engines with.
    pub fn swap(&self) -> EngineSwap<SV> {
        EngineSwap {
            general: self.inner.clone(),
            fast: self.fast.clone(),
            conf: self.conf.clone(),
            options: self.options.clone(),
        }
    }

    /// The admission shared with [`H1First`].
    pub fn admission(&self) -> Admission {
        self.admission.clone()
    }
}

impl<SV> LeanHttp<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    <SV as ProxyHttp>::CTX: Send + Sync,
{
    /// An HTTP/1 request (or any session but HTTP/2's) handed over by Pingora;
    /// [`HttpServerApp::process_new_http`] boxes it in place.
    async fn serve_session(
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
                s.set_read_timeout(Some(self.limits.client_timeout));
                s.set_write_timeout(Some(self.limits.client_timeout));
                s
            }
            other => other,
        };
        self.general(session, shutdown).await
    }

    /// One HTTP/2 stream. Its session (536 bytes) is used where the future captured it:
    /// an `async fn` would move its argument once more into the body's own local, and a
    /// `match` by value once again.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would move the session once more"
    )]
    fn serve_h2<'f>(
        self: &'f Arc<Self>,
        mut h2: pingora_core::protocols::http::v2::server::HttpSession,
        shutdown: &'f ShutdownWatch,
    ) -> impl std::future::Future<Output = Option<ReusedHttpStream>> + Send + 'f {
        async move {
            // Both engines: a stream whose client takes no response bytes (no flow-control
            // window) for `client_timeout` is reset, not held with its backend connection.
            h2.set_write_timeout(Some(self.limits.client_timeout));
            if let Some(fast) = self.fast.load_full() {
                if fast.serve_h2(&mut h2).await {
                    return None;
                }
            }
            let mut s = ServerSession::H2(h2);
            s.set_read_timeout(Some(self.limits.client_timeout));
            s.set_write_timeout(Some(self.limits.client_timeout));
            self.general(s, shutdown).await
        }
    }

    /// Pingora's own path, for what the fast path does not serve.
    async fn general(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let inner = self.inner.load_full();
        inner.process_new_http(session, shutdown).await
    }
}

#[async_trait]
impl<SV> HttpServerApp for LeanHttp<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    <SV as ProxyHttp>::CTX: Send + Sync,
{
    /// Written out rather than `async fn`: `#[async_trait]` boxes with `Box::pin`, which
    /// copied the whole future into its box for each request (3.8 KiB when an HTTP/2
    /// stream's fast-path exchange was inside it); see [`crate::mem::pin_in_place`]. An
    /// HTTP/2 stream's future is its own.
    fn process_new_http<'a, 'b, 'f>(
        self: &'a Arc<Self>,
        session: ServerSession,
        shutdown: &'b ShutdownWatch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<ReusedHttpStream>> + Send + 'f>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        match session {
            ServerSession::H2(h2) => crate::mem::pin_in_place(|| self.serve_h2(h2, shutdown)),
            other => crate::mem::pin_in_place(|| self.serve_session(other, shutdown)),
        }
    }

    /// HTTP/2 connections get the listener's header-size limit as their header list size
    /// (the request-head guard only reads HTTP/1), on Pingora's bounded defaults.
    fn h2_options(&self) -> Option<H2Options> {
        let mut o = self
            .inner
            .load()
            .h2_options()
            .unwrap_or_else(pingora_core::protocols::http::v2::server::default_h2_options);
        o.max_header_list_size(u32::try_from(self.limits.max_header_size).unwrap_or(u32::MAX));
        Some(o)
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.options.as_ref()
    }

    async fn http_cleanup(&self) {
        let inner = self.inner.load_full();
        inner.http_cleanup().await
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
    /// The listener's header timeout, which also bounds an HTTP/2 client's preface.
    header_wait: Duration,
    admission: Admission,
    /// Plain reverse-proxy requests, served without Pingora's per-request machinery.
    fast: FastSwap,
    keepalive_requests: Option<u32>,
}

impl<A> H1First<A> {
    pub fn new(
        inner: A,
        limits: &ListenerLimits,
        admission: Admission,
        fast: FastSwap,
    ) -> H1First<A> {
        H1First {
            inner: Arc::new(inner),
            idle_wait: limits.keepalive_timeout,
            header_wait: limits.header_timeout,
            admission,
            fast,
            keepalive_requests: limits.keepalive_requests,
        }
    }
}

impl<A> H1First<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// A connection for Pingora's own path (HTTP/2 by ALPN or h2c, custom protocols), boxed
    /// so its size is paid only by the connections that take it. A stream it hands back is
    /// returned if `hand_back`, else served again here.
    async fn pingora(
        self: &Arc<Self>,
        g: Box<Guarded>,
        shutdown: &ShutdownWatch,
        hand_back: bool,
    ) -> Option<Stream> {
        let next = Box::pin(pingora_core::apps::ServerApp::process_new(
            &self.inner,
            g,
            shutdown,
        ))
        .await;
        match next {
            Some(s) if !hand_back => {
                Box::pin(crate::net::listen::serve_reused(self, s, shutdown)).await;
                None
            }
            next => next,
        }
    }

    /// An HTTP/2 connection (by ALPN or the h2c preface): its streams are the app's, served
    /// in this connection's task (see [`super::h2conn`]).
    async fn h2(self: &Arc<Self>, mut g: Box<Guarded>, shutdown: &ShutdownWatch) {
        g.watch_http2();
        let limits = super::h2conn::H2Limits {
            preface: self.header_wait,
            idle: self.idle_wait,
            max_streams: self.keepalive_requests,
        };
        super::h2conn::serve(&self.inner, g, limits, shutdown).await
    }

    /// One request on Pingora's general path.
    /// `served`: requests this connection carried before this one, by either engine.
    async fn general(
        self: &Arc<Self>,
        g: Box<Guarded>,
        persistent: Option<Box<pingora_core::apps::HttpPersistentSettings>>,
        served: u32,
        shutdown: &ShutdownWatch,
    ) -> Option<(Box<Guarded>, Option<Box<HttpPersistentSettings>>)> {
        let mut session = ServerSession::new_http1(g);
        if let Some(p) = persistent {
            (*p).apply_to_session(&mut session);
        }
        // The policy's keep-alive, whichever engine served the requests before this one.
        let draining = *shutdown.borrow() || crate::lifecycle::draining();
        session.set_keepalive((!draining).then_some(self.idle_wait.as_secs().max(1)));
        session.set_keepalive_reuses_remaining(
            self.keepalive_requests
                .map(|n| n.saturating_sub(served.saturating_add(1))),
        );
        let (next, p) = self
            .inner
            .process_new_http(session, shutdown)
            .await?
            .consume();
        Some((next.into_any().downcast::<Guarded>().ok()?, p.map(Box::new)))
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
        let a = crate::net::listen::Accepted::new(stream);
        self.clone().serve(a, shutdown.clone(), true).await
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// What an HTTP/1 connection's request loop starts from ([`H1First::requests`]).
struct Http1<A> {
    app: Arc<H1First<A>>,
    g: Box<Guarded>,
    shutdown: ShutdownWatch,
    plain: bool,
    open: crate::lifecycle::OpenConnection,
}

/// A plaintext connection's task holds [`H1First::serve`]'s future itself, in one box,
/// rather than a future that holds `process_new`'s box (and the arguments of both).
impl<A> crate::net::listen::ConnApp for H1First<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    fn connection(
        self: Arc<Self>,
        a: crate::net::listen::Accepted,
        shutdown: ShutdownWatch,
    ) -> crate::net::listen::ConnFuture {
        Box::pin(self.serve(a, shutdown, false))
    }

    fn delays_acks(&self) -> bool {
        true
    }
}

impl<A> H1First<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// How long a connection may wait for its first request: `header_timeout` (capped by
    /// `keepalive_timeout`), from when the kernel hands it over. nginx (`client_header_timeout`)
    /// and HAProxy (`timeout http-request`) count a new connection's first head from its
    /// accept in the same way; `keepalive_timeout` is for the wait between requests. A client
    /// that connects and says nothing so holds a connection for seconds, not a minute.
    fn first_wait(&self) -> Duration {
        self.header_wait.min(self.idle_wait)
    }

    /// The wait for the next request on `conn`: the first request's, or the keep-alive one.
    fn wait_for(&self, conn: &super::fast::Conn) -> Duration {
        if conn.served == 0 {
            self.first_wait()
        } else {
            self.idle_wait
        }
    }

    /// A connection, from admission to its end: HTTP/1 requests in a loop of our own,
    /// anything else handed to Pingora. `hand_back`: a stream Pingora's path hands back for
    /// reuse is returned (to Pingora's service, which runs it again), else served here.
    ///
    /// In two stages ([`super::staged`]): admission and protocol detection in a box of their
    /// own, then the HTTP/1 request loop in the connection's allocation, holding only what
    /// the loop uses.
    fn serve(
        self: Arc<Self>,
        a: crate::net::listen::Accepted,
        shutdown: ShutdownWatch,
        hand_back: bool,
    ) -> impl std::future::Future<Output = Option<Stream>> + Send {
        super::staged::staged(self.first(a, shutdown, hand_back), |h: Http1<A>| {
            h.app.requests(h.g, h.shutdown, h.plain, h.open)
        })
    }

    /// Admission and protocol detection: HTTP/2 and Pingora's path are served here, HTTP/1
    /// handed on to [`Self::requests`].
    ///
    /// Owns what it uses, in an `async move` block rather than an `async fn`: an async fn
    /// moves each argument into a local of its body and keeps the argument's own room too.
    #[allow(clippy::manual_async_fn)] // on purpose: the room above
    fn first(
        self: Arc<Self>,
        a: crate::net::listen::Accepted,
        shutdown: ShutdownWatch,
        hand_back: bool,
    ) -> impl std::future::Future<Output = Next<Http1<A>, Option<Stream>>> + Send {
        async move {
            use pingora_core::protocols::ALPN;
            crate::net::serving_thread();
            let Some(stream) = a.settle() else {
                return Next::Done(None);
            };
            let open = crate::lifecycle::open_connection();
            let opts = self.inner.server_options();
            let plain = stream.get_ssl_digest().is_none();
            let h2c = opts.is_some_and(|o| o.h2c) && plain;
            let custom = opts.is_some_and(|o| o.force_custom);
            let h1 = matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1));
            if custom || !h1 {
                let h2 = !custom && matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
                let Some(g) = Box::pin(self.admission.admit_as(stream, false)).await else {
                    return Next::Done(None);
                };
                if h2 {
                    crate::mem::pin_in_place(|| self.h2(g, &shutdown)).await;
                    return Next::Done(None);
                }
                return Next::Done(
                    crate::mem::pin_in_place(|| self.pingora(g, &shutdown, hand_back)).await,
                );
            }
            let Some(mut g) = Box::pin(self.admission.admit(stream)).await else {
                return Next::Done(None);
            };
            if h2c {
                // An h2c listener still serves HTTP/1 here; only the preface goes to HTTP/2. The
                // peek waits for a first request's bytes, so it gets the first request's time: a
                // client that sends nothing, or stops inside the preface, is closed at
                // `header_timeout` as on any listener.
                // (boxed: a timer in the connection's own future would be carried by every idle
                // connection)
                let mut preface = [0u8; 24];
                let peeked = Box::pin(crate::net::deadline::within(
                    self.first_wait(),
                    g.try_peek(&mut preface),
                ))
                .await;
                let Some(peeked) = peeked else {
                    log::debug!(
                        "closing the connection of {}: no request within {:?} (header_timeout)",
                        g.peer(),
                        self.first_wait()
                    );
                    return Next::Done(None);
                };
                if matches!(peeked, Ok(true)) && &preface == crate::net::H2_PREFACE {
                    crate::mem::pin_in_place(|| self.h2(g, &shutdown)).await;
                    return Next::Done(None);
                }
            }
            Next::Then(Http1 {
                app: self,
                g,
                shutdown,
                plain,
                open,
            })
        }
    }

    /// HTTP/1 requests in a loop of our own, anything the fast path leaves to Pingora's path
    /// served there. Between requests a plaintext connection waits here holding only the
    /// socket, a TLS one holding a small first read (see `wait_for_request`).
    #[allow(clippy::manual_async_fn)] // on purpose: see `first`
    fn requests(
        self: Arc<Self>,
        mut g: Box<Guarded>,
        shutdown: ShutdownWatch,
        plain: bool,
        open: crate::lifecycle::OpenConnection,
    ) -> impl std::future::Future<Output = Option<Stream>> + Send {
        async move {
            let _open = open;
            let shutdown = &shutdown;
            let mut conn = super::fast::Conn::default();
            // Boxed: 80 bytes, only for connections that Pingora's path served.
            let mut persistent: Option<Box<HttpPersistentSettings>> = None;
            // A deferred connection's first request is read at once by the fast path, without
            // the wait's one-byte peek (a system call per connection that would only say what
            // that read finds); if it finds nothing after all, the connection waits as any idle
            // one does.
            let mut first = true;
            loop {
                let read_at_once = std::mem::take(&mut first)
                    && plain
                    && g.inner()
                        .as_any()
                        .downcast_ref::<crate::net::listen::PlainTcp>()
                        .is_some_and(|t| t.likely_has_data())
                    && self.fast.load().is_some();
                // A deferred connection's first piece, read now, or nothing (no allocation).
                let (head, must_wait) = if read_at_once {
                    match super::fast::read_now(&mut g) {
                        Some(Ok(buf)) => (buf, false),
                        Some(Err(_)) => return None,
                        None => (Vec::new(), true),
                    }
                } else {
                    (Vec::new(), true)
                };
                // `head` is moved whole on every path and never borrowed here: a value kept
                // across the idle wait, even an empty one, would be kept by every idle connection.
                let head = if must_wait {
                    drop(head);
                    // A request pipelined behind the last one is held by the guard (see
                    // `guard::Body`), so it is served here in order, by whichever engine takes it.
                    let wait = self.wait_for(&conn);
                    match wait_for_request(&mut g, &mut conn.timer, wait).await {
                        Idle::Ready => {}
                        Idle::Closed => return None,
                    }
                    Vec::new()
                } else {
                    head
                };
                // The engine in force for this request, taken once its first bytes are in (a
                // reload during the idle wait applies to it; one during its head's read, to the
                // next request). One load per request: each costs about 50 instructions.
                if let Some(fast) = self.fast.load_full() {
                    // Also on a plaintext connection: its readiness may have been for nothing.
                    let wait = Some(self.wait_for(&conn));
                    // Boxed: the request's state is allocated while it runs, not carried by
                    // every idle connection (and made in a statement of its own: a temporary
                    // of the awaiting statement would keep its room in this future).
                    let read = Box::pin(super::fast::read_head(&mut g, wait, head));
                    let buf = match read.await {
                        Ok(buf) => buf,
                        Err(_) => return None,
                    };
                    let draining = *shutdown.borrow() || crate::lifecycle::draining();
                    let served = crate::mem::pin_in_place(|| {
                        fast.serve(&mut g, &mut conn, draining, buf, shutdown)
                    });
                    match served.await {
                        super::fast::Outcome::KeepAlive => continue,
                        super::fast::Outcome::Close => return None,
                        super::fast::Outcome::Fallback => {}
                    }
                } else {
                    // the fast path is off: whatever the read at once took goes back to the guard
                    g.give_back(head);
                }
                // Boxed: Pingora's session (about a kilobyte) and its request future exist only
                // while such a request runs.
                let served = conn.served;
                conn.served = conn.served.saturating_add(1);
                let general = crate::mem::pin_in_place(|| {
                    self.general(g, persistent.take(), served, shutdown)
                });
                let (next, p) = general.await?;
                g = next;
                persistent = p;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app that serves nothing: [`H1First`]'s own state does not depend on it (every
    /// call into it is boxed).
    struct Nop;

    #[async_trait]
    impl HttpServerApp for Nop {
        async fn process_new_http(
            self: &Arc<Self>,
            _: ServerSession,
            _: &ShutdownWatch,
        ) -> Option<ReusedHttpStream> {
            None
        }
    }

    /// Every idle keep-alive connection holds this future: its size is most of what an idle
    /// connection costs (issue 17).
    #[tokio::test]
    async fn idle_connection_state_is_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let limits = ListenerLimits::default();
        let app = Arc::new(H1First::new(
            Nop,
            &limits,
            Admission::new("t", &limits),
            Arc::new(ArcSwapOption::empty()),
        ));
        let stream: Stream = Box::new(crate::net::listen::PlainTcp::new(
            s.into_std().unwrap(),
            peer,
        ));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let a = crate::net::listen::Accepted::new(stream);
        let fut = crate::net::listen::ConnApp::connection(app, a, rx);
        let n = std::mem::size_of_val(&*fut);
        eprintln!("idle connection future: {n} bytes");
        // 688 bytes (release) before the idle wait lost its timer, its shutdown wait and
        // its waiter; 232 in a debug build after (240 in release: mimalloc's 256-byte size
        // class); 176 once its arguments were no longer kept twice and Pingora's path was
        // boxed; 120 with admission and protocol detection a stage of their own. An
        // allocation of up to 128 bytes.
        assert!(n <= 128, "the connection future grew to {n} bytes");
    }
}
