//! A guard on the bytes of each HTTP/1 request head, before Pingora parses them.
//!
//! Pingora's HTTP/1 reader has a per-read timeout but no deadline for the whole head, and
//! its size limits (1 MiB, 256 headers) are far above what an edge proxy should accept. The
//! guard wraps the downstream stream once per connection and watches what the parser reads:
//! the request line, the head's size and line count, and the time since the head's first
//! byte. When the head is complete, and before Pingora sees its last bytes, it runs the strict
//! syntax and framing checks of [`super::strict`] on it (on the read buffer itself when the
//! head came in one read, else on a copy kept across reads). On a violation it writes the
//! proxy's own answer (400, 501, 414, 431 or 408) straight to the socket and fails the read,
//! so Pingora closes the connection without parsing further.
//! Body bytes pass through untouched; [`Guarded::arm`] starts the watch again for the next
//! request on a keep-alive connection. It also holds the connection's slot in the listener's
//! connection count for as long as the connection lives.

use pingora_core::protocols::Stream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_request_line: usize,
    pub max_header_size: usize,
    pub max_header_count: usize,
    pub header_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for / reading the request line (counted in `line_len`).
    RequestLine,
    Headers,
    /// Head complete: body bytes and anything else pass through.
    Body,
}

/// What the guards of one listener share, held by one pointer per connection.
#[derive(Debug)]
pub struct GuardConf {
    pub limits: HeadLimits,
    /// The listener's open-connection counter: each guard made with it holds a slot (taken
    /// by the caller) and gives it back when the connection closes.
    pub open: Option<Arc<AtomicUsize>>,
    /// The listener's name, for the refusal count.
    pub listener: Option<Arc<str>>,
    /// The listener answers one request per connection (`keepalive_requests: 1`): a client
    /// that pipelines has its second request past the limit, so a connection that carried
    /// one request is looked at for unread bytes when it closes, too.
    pub one_request: bool,
}

pub struct Guarded {
    inner: Stream,
    conf: Arc<GuardConf>,
    phase: Phase,
    head_len: usize,
    line_len: usize,
    lines: usize,
    /// Last byte of the current line, to tell an empty line (`\r\n`) split across reads.
    last: u8,
    /// When the head must be complete: its first bytes plus the header timeout, set when a
    /// read leaves the head incomplete.
    deadline: Option<std::time::Instant>,
    /// The timer for `deadline`, created only if a read of the head has to wait: a head that
    /// arrives in one read (the common case) never registers a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The head's bytes from earlier reads, when it spans several (leading empty lines
    /// skipped), for [`crate::policy::head::check_head`].
    partial: Vec<u8>,
    rearm: AtomicBool,
    /// Bytes read from the socket by the fast path but handed on unconsumed (a request it
    /// leaves to Pingora, or the next pipelined request): read again before the socket.
    pending: crate::net::held::Held,
    /// Small writes gathered until a flush, so a response head and a short body leave in one
    /// segment without a buffer in the stream below. Allocated per response, freed on flush:
    /// an idle connection holds none.
    wbuf: Vec<u8>,
    /// What of the body after the head is still handed on.
    body: Body,
    /// A head was refused: the client may still be sending it.
    refused: bool,
    /// Request heads seen on this connection (saturating): a client that sent a second
    /// one may have pipelined more.
    heads: u32,
    /// This request's ACK was asked for ([`Guarded::ack_incomplete`]).
    acked: bool,
    /// HTTP/2: a write found the client's connection reset ([`Guarded::absorb_reset`]).
    reset: bool,
    /// The stream below may hold bytes that only a flush sends: it was written to, read
    /// from (OpenSSL writes while it reads: a key update's answer) or handed out since its
    /// last flush. h2 flushes each time its connection is polled, about 1.5 times per
    /// request, nearly always with nothing written; through Pingora's TLS stream each such
    /// flush cost about 410 instructions (the error queue cleared, OpenSSL's context set).
    unflushed: bool,
}

/// The guard hands on one request at a time: its head, then exactly its body. Bytes past
/// the body (a pipelined request) are held until the next head is watched, so they pass the
/// same checks and reach whichever engine serves that request, never a parser that would
/// drop them.
#[derive(Debug)]
enum Body {
    /// Everything passes (a tunnel may follow, or the stream is HTTP/2).
    Pass,
    /// This many bytes are left of a Content-Length body.
    Left(u64),
    /// A chunked body, and the whole chunks of the last read (see [`Guarded::limit_body`]).
    /// Boxed: inline, its 80 bytes would be carried by every idle connection's guard, and
    /// took it from mimalloc's 192-byte size class to the 256-byte one (issue 17).
    Chunked(Box<(super::chunked::ChunkedScanner, Vec<super::chunked::Span>)>),
    /// The request is complete: nothing more until the next head is watched.
    Held,
    /// An HTTP/2 connection: everything passes, and its header blocks are timed.
    H2(super::h2scan::H2Scanner),
}

impl Body {
    /// Whether the client is still sending this request's body.
    fn arriving(&self) -> bool {
        matches!(self, Body::Chunked(..)) || matches!(self, Body::Left(n) if *n > 0)
    }
}

/// Chunk spans whose room a chunked body keeps between reads (12 bytes each); a read that
/// needed more gives its room back at once.
const SPANS_KEPT: usize = 64;

/// Writes shorter than this are gathered (one MSS, as Pingora's own L4 write buffer).
const WRITE_GATHER: usize = 1460;

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(c) = &self.conf.open {
            c.fetch_sub(1, Relaxed);
        }
        // Closed with the client still sending (a refused head, a request body left unread,
        // pipelined requests past `keepalive_requests`): a plain close would reset the
        // connection under the answers. nginx lingers in the same cases. The socket is
        // asked only once a second request came (or on a listener that answers one per
        // connection): a connection that carried one request (most closes: `Connection:
        // close`) pays no system call for the check.
        let asked = self.heads > 1 || (self.heads == 1 && self.conf.one_request);
        let unread = self.refused
            || self.body.arriving()
            || (self.between_requests()
                && (self.has_pending()
                    || (asked && crate::net::sockopt::has_unread(self.inner.id()))));
        if unread {
            let s = std::mem::replace(&mut self.inner, Box::new(crate::net::linger::Closed));
            crate::net::linger::linger(s);
        }
    }
}

/// The guard's answers are the policy's, and close the connection.
fn answer(code: u16) -> Vec<u8> {
    crate::policy::answer::Answer::closing(code).h1(false, false)
}

impl Guarded {
    /// `conn_slot`: the listener's open-connection counter, already incremented for this
    /// connection; the guard gives it back when the connection closes.
    pub fn new(inner: Stream, limits: HeadLimits, conn_slot: Option<Arc<AtomicUsize>>) -> Guarded {
        let conf = GuardConf {
            limits,
            open: conn_slot,
            listener: None,
            one_request: false,
        };
        Guarded::with_conf(inner, Arc::new(conf))
    }

    /// A guard with its listener's shared settings; a slot in `conf.open`, if counted, is
    /// already taken for this connection.
    pub fn with_conf(inner: Stream, conf: Arc<GuardConf>) -> Guarded {
        Guarded {
            inner,
            conf,
            phase: Phase::RequestLine,
            head_len: 0,
            line_len: 0,
            lines: 0,
            last: 0,
            deadline: None,
            timer: None,
            partial: Vec::new(),
            rearm: AtomicBool::new(false),
            pending: Default::default(),
            wbuf: Vec::new(),
            body: Body::Pass,
            refused: false,
            heads: 0,
            acked: false,
            reset: false,
            unflushed: true,
        }
    }

    /// Pass every byte through unwatched (an HTTP/3 request body's pipe): the guard only
    /// holds its slot in the connection count.
    pub fn passthrough(mut self) -> Guarded {
        self.phase = Phase::Body;
        self.body = Body::Pass;
        self
    }

    /// An HTTP/2 connection, from its preface: its bytes pass through, and only its header
    /// blocks are timed (`header_timeout`), as an HTTP/1 head is.
    pub fn watch_http2(&mut self) {
        self.phase = Phase::Body;
        self.body = Body::H2(super::h2scan::H2Scanner::new());
    }

    /// The stream below, for writers that send whole responses (the fast path).
    pub fn inner_mut(&mut self) -> &mut Stream {
        self.unflushed = true;
        &mut self.inner
    }

    /// Write out the gathered bytes.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.wbuf.is_empty() {
            self.unflushed = true;
            match Pin::new(&mut self.inner).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.wbuf.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.wbuf = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// Watch the next request head, for a reader that owns the guard.
    pub fn arm_now(&mut self) {
        self.rearm.store(false, Relaxed);
        self.reset();
    }

    /// Whether the head being watched is complete (and passed the strict checks).
    #[inline]
    pub fn head_done(&self) -> bool {
        self.phase == Phase::Body
    }

    /// [`Guarded::unread`] of a buffer that the caller is done with (taken by value, so that
    /// a caller's future need not keep it).
    pub fn give_back(&mut self, bytes: Vec<u8>) {
        self.unread(&bytes);
    }

    /// Give back bytes that were read but not consumed; they are read (and scanned) again,
    /// before anything from the socket, as the start of the next head.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.pending.put_front(bytes);
        self.reset();
    }

    /// The plain socket below, when the rest of this request's body, `left` bytes of a
    /// Content-Length body, may go from it to the backend without passing through the
    /// guard (splice(2)): nothing of it is buffered here, and nothing else is watched
    /// until it is done. The caller then reports what it moved with [`Guarded::spliced`].
    pub fn body_socket(&self, left: u64) -> Option<&crate::net::plain::PlainTcp> {
        let whole = matches!(self.body, Body::Left(n) if n == left);
        if !whole || self.phase != Phase::Body || self.has_pending() || self.rearm.load(Relaxed) {
            return None;
        }
        self.plain_socket()
    }

    /// The plain socket below (our accept loop's), for a response body written to it with
    /// splice(2); `None` for TLS or a PROXY-header stream, or with gathered bytes unsent.
    pub fn plain_socket(&self) -> Option<&crate::net::plain::PlainTcp> {
        if !self.wbuf.is_empty() {
            return None;
        }
        self.inner.as_any().downcast_ref()
    }

    /// `n` bytes of the body went from the socket straight to the backend: counted off as
    /// a read through the guard would; `acked`: the kernel was asked to acknowledge them.
    pub fn spliced(&mut self, n: u64, acked: bool) {
        if let Body::Left(left) = &mut self.body {
            *left = left.saturating_sub(n);
            if *left == 0 {
                self.body = Body::Held;
            }
        }
        self.acked |= acked;
    }

    /// Whether unread bytes are waiting, so the socket need not be polled for a request.
    #[inline]
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The inner stream, for the socket-level checks of an idle connection.
    pub fn inner(&self) -> &Stream {
        &self.inner
    }

    /// An HTTP/1 connection before a request's head or after its body (not a tunnel, an
    /// HTTP/2 connection or an HTTP/3 body's pipe).
    fn between_requests(&self) -> bool {
        self.phase != Phase::Body || matches!(self.body, Body::Held | Body::Left(0))
    }

    /// Watch the next request head on this connection.
    pub fn arm(&self) {
        self.rearm.store(true, Relaxed);
    }

    fn reset(&mut self) {
        self.body = Body::Pass;
        self.acked = false;
        self.phase = Phase::RequestLine;
        self.head_len = 0;
        self.line_len = 0;
        self.lines = 0;
        self.last = 0;
        self.deadline = None;
        self.timer = None;
        self.clear_partial();
    }

    /// Keep a small buffer for the next head; give a large one back.
    fn clear_partial(&mut self) {
        if self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        } else {
            self.partial.clear();
        }
    }

    /// The strict checks on the complete head, `head_tail` being its bytes in this read.
    fn check(&mut self, head_tail: &[u8]) -> Result<(), (u16, &'static str)> {
        let r = if self.partial.is_empty() {
            crate::policy::head::check_head(head_tail)
        } else {
            self.partial.extend_from_slice(head_tail);
            let r = crate::policy::head::check_head(&self.partial);
            self.clear_partial();
            r
        };
        let f = r.map_err(|r| (r.status, r.reason))?;
        self.heads = self.heads.saturating_add(1);
        self.body = if f.tunnel {
            Body::Pass
        } else if f.chunked {
            Body::Chunked(Box::default())
        } else {
            Body::Left(f.length.unwrap_or(0))
        };
        Ok(())
    }

    /// Keep the bytes of `buf` from `from` on that belong to this request's body; hold the
    /// rest back for the next head. The whole chunks of a chunked body that came in this
    /// read are merged into one ([`super::chunked::coalesce`]): every engine forwards a
    /// chunked body chunk by chunk, so a client's tiny chunks would each cost a write to
    /// the backend.
    fn limit_body(
        &mut self,
        buf: &mut ReadBuf<'_>,
        from: usize,
    ) -> Result<(), (u16, &'static str)> {
        let data = &buf.filled()[from..];
        let (mut merge, mut ended) = (false, false);
        let keep = match &mut self.body {
            Body::Pass | Body::H2(_) => return Ok(()),
            Body::Held => 0,
            Body::Left(n) => {
                let k = (*n).min(data.len() as u64);
                *n -= k;
                ended = *n == 0;
                k as usize
            }
            Body::Chunked(c) => {
                let (scan, spans) = &mut **c;
                let keep = match scan.scan_spans(data, spans) {
                    Ok(super::chunked::Scan::More) => data.len(),
                    Ok(super::chunked::Scan::Done(k)) => {
                        ended = true;
                        k
                    }
                    Err(_) => return Err((400, "malformed chunked request body")),
                };
                merge = spans.len() > 1;
                keep
            }
        };
        if keep < data.len() {
            self.pending.put_front(&data[keep..]);
            buf.set_filled(from + keep);
        }
        if merge {
            if let Body::Chunked(c) = &mut self.body {
                let spans = &mut c.1;
                let n = super::chunked::coalesce(&mut buf.filled_mut()[from..], spans);
                buf.set_filled(from + n);
                // a read of tiny chunks needs thousands of spans; hold none of them after it
                if spans.capacity() > SPANS_KEPT {
                    *spans = Vec::new();
                }
            }
        }
        if ended {
            self.body = Body::Held;
        }
        Ok(())
    }

    /// A read found the request incomplete: have the kernel acknowledge what came so far
    /// now, once per request, so that a client whose Nagle algorithm holds the rest until
    /// that ACK does not wait for the delayed-ACK timer (see [`crate::net::sockopt`]).
    /// Complete requests never pay for the call; their ACK rides on the response.
    fn ack_incomplete(&mut self) {
        if !self.acked {
            self.acked = true;
            // Pingora's TCP and TLS streams, and ours, are identified by their socket's fd.
            crate::net::sockopt::ack_now(self.inner.id());
        }
    }

    /// Let every byte through from now on: the connection became a tunnel (after a 101).
    pub fn release(&mut self) {
        self.body = Body::Pass;
    }

    /// Scan newly read head bytes; `Err((code, reason))` on a violation, else how many bytes
    /// belong to the head. Limits work line by line (a line end found 16 bytes at a time), so
    /// their cost is per line, not per byte; the strict checks run once per head.
    fn scan(&mut self, data: &[u8]) -> Result<usize, (u16, &'static str)> {
        let mut pos = 0;
        // leading CRLFs before a request line are allowed by RFC 9112 and ignored here
        if self.phase == Phase::RequestLine && self.line_len == 0 {
            while pos < data.len() && (data[pos] == b'\r' || data[pos] == b'\n') {
                pos += 1;
            }
        }
        let l = self.conf.limits;
        // a line's length excludes its LF but includes a CR, hence the +1 on the line limit
        let too_long = |phase: Phase| {
            if phase == Phase::RequestLine {
                (414, "request line too long")
            } else {
                (431, "request head too large")
            }
        };
        let base = pos;
        while let Some(nl) = crate::policy::scan::find_byte(data, pos, b'\n') {
            let seg = nl - pos;
            let line = self.line_len + seg;
            let last = if seg > 0 { data[nl - 1] } else { self.last };
            self.head_len += seg + 1;
            if self.head_len > l.max_header_size {
                return Err(too_long(self.phase));
            }
            match self.phase {
                Phase::RequestLine => {
                    if line > l.max_request_line + 1 {
                        return Err(too_long(Phase::RequestLine));
                    }
                    self.phase = Phase::Headers;
                }
                Phase::Headers => {
                    if line == 0 || (line == 1 && last == b'\r') {
                        self.phase = Phase::Body;
                        self.deadline = None;
                        self.timer = None;
                        self.check(&data[base..nl + 1])?;
                        return Ok(nl + 1);
                    }
                    self.lines += 1;
                    if self.lines > l.max_header_count {
                        return Err((431, "too many header fields"));
                    }
                }
                Phase::Body => return Ok(nl + 1),
            }
            self.line_len = 0;
            self.last = 0;
            pos = nl + 1;
        }
        let rest = data.len() - pos;
        if rest > 0 {
            self.line_len += rest;
            self.head_len += rest;
            self.last = data[data.len() - 1];
            if self.head_len > l.max_header_size {
                return Err(too_long(self.phase));
            }
            if self.phase == Phase::RequestLine && self.line_len > l.max_request_line + 1 {
                return Err(too_long(Phase::RequestLine));
            }
        }
        if base < data.len() {
            self.partial.extend_from_slice(&data[base..]);
        }
        Ok(data.len())
    }

    fn reject(
        &mut self,
        cx: &mut Context<'_>,
        code: u16,
        reason: &str,
    ) -> Poll<std::io::Result<()>> {
        log::warn!(
            "rejecting request head from {}: {reason} ({code})",
            self.peer()
        );
        crate::observability::refused(
            self.conf.listener.as_deref().unwrap_or("-"),
            &code.to_string(),
        );
        self.refused = true;
        self.clear_partial();
        // Best effort: a tiny answer into an idle socket completes at once.
        self.unflushed = true;
        let mut inner = Pin::new(&mut self.inner);
        if let Poll::Ready(Ok(_)) = inner.as_mut().poll_write(cx, &answer(code)) {
            let _ = inner.as_mut().poll_flush(cx);
        }
        self.phase = Phase::Body;
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("request head rejected with {code}"),
        )))
    }
}

impl Guarded {
    /// The client's address, for log lines.
    pub(crate) fn peer(&self) -> String {
        self.inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(|a| a.to_string()))
            .unwrap_or_else(|| "-".into())
    }

    /// Whether the head's (or header block's) deadline has passed; the timer is made on the
    /// first wait and wakes the reader when it does. `false` with no deadline set.
    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(at) = self.deadline else {
            return false;
        };
        let timer = self.timer.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(at)))
        });
        timer.as_mut().poll(cx).is_ready()
    }

    /// Bytes held from an earlier read first, then the socket's.
    fn read_through(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            self.pending.take_into(buf);
            Poll::Ready(Ok(()))
        } else {
            self.unflushed = true;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    /// An HTTP/2 read. One through OpenSSL that is bound to find nothing is not made
    /// ([`crate::net::tls_io::read_would_wait`]): h2 reads until a read finds nothing each
    /// time any stream wakes its connection. Kept out of line: the HTTP/1 read path, inlined
    /// into the fast path's request future, does not carry it.
    #[inline(never)]
    fn h2_poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        before: usize,
    ) -> Poll<std::io::Result<()>> {
        let polled =
            if self.pending.is_empty() && crate::net::tls_io::read_would_wait(&self.inner, cx) {
                Poll::Pending
            } else {
                self.read_through(cx, buf)
            };
        self.h2_read(cx, buf, before, polled)
    }

    /// An HTTP/2 read's bookkeeping: the header deadline runs while the bytes stop inside a
    /// header block (see [`super::h2scan`]), from the read that left it open. Past it the
    /// read fails, and h2 drops the connection, as nginx closes one on
    /// `client_header_timeout`.
    fn h2_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        before: usize,
        polled: Poll<std::io::Result<()>>,
    ) -> Poll<std::io::Result<()>> {
        let Body::H2(scan) = &mut self.body else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return polled;
                }
                let fresh = scan.feed(new);
                if !scan.in_headers() {
                    self.deadline = None;
                    self.timer = None;
                } else if fresh || self.deadline.is_none() {
                    self.deadline =
                        Some(std::time::Instant::now() + self.conf.limits.header_timeout);
                    self.timer = None;
                }
                polled
            }
            Poll::Pending => {
                if !self.deadline_passed(cx) {
                    return Poll::Pending;
                }
                log::warn!(
                    "closing the HTTP/2 connection of {}: a header block incomplete after {:?} (header_timeout)",
                    self.peer(),
                    self.conf.limits.header_timeout
                );
                crate::observability::refused(self.conf.listener.as_deref().unwrap_or("-"), "408");
                self.refused = true;
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "HTTP/2 header block read deadline exceeded",
                )))
            }
            other => other,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.rearm.swap(false, Relaxed) {
            this.reset();
        }
        if this.phase == Phase::Body {
            match this.body {
                Body::Pass if this.pending.is_empty() => {
                    this.unflushed = true;
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                // The request is complete; its reader gets nothing more (the next request
                // waits, held, for the next head's watch).
                Body::Held => return Poll::Pending,
                _ => {}
            }
        }
        let before = buf.filled().len();
        if matches!(this.body, Body::H2(_)) {
            return this.h2_poll_read(cx, buf, before);
        }
        let polled = this.read_through(cx, buf);
        if this.phase == Phase::Body {
            match polled {
                Poll::Ready(Ok(())) => {
                    if let Err((code, reason)) = this.limit_body(buf, before) {
                        return this.reject(cx, code, reason);
                    }
                }
                Poll::Pending if this.body.arriving() => this.ack_incomplete(),
                _ => {}
            }
            return polled;
        }
        match polled {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                if filled.len() > before {
                    match this.scan(&filled[before..]) {
                        Err((code, reason)) => return this.reject(cx, code, reason),
                        Ok(n) if this.phase == Phase::Body => {
                            if let Err((code, reason)) = this.limit_body(buf, before + n) {
                                return this.reject(cx, code, reason);
                            }
                        }
                        // The header time counts from the head's first bytes; a head that
                        // came whole in one read (nearly all) needs no clock reading.
                        Ok(_) if this.deadline.is_none() => {
                            this.deadline =
                                Some(std::time::Instant::now() + this.conf.limits.header_timeout);
                        }
                        Ok(_) => {}
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.deadline.is_some() {
                    this.ack_incomplete();
                    if this.deadline_passed(cx) {
                        return this.reject(cx, 408, "header read deadline exceeded");
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

use std::future::Future;

#[path = "guard_io.rs"]
mod io;

/// Fuzzing hook, not an API: a fresh guard over `inner` scans `reads` as if they were
/// successive socket reads. Returns the scanner's answer for each read, stopping after the
/// first violation, and whether the head was seen to end. `inner` is never read or written;
/// it is a parameter only because a guard owns a stream.
#[doc(hidden)]
pub fn fuzz_scan(
    inner: Stream,
    limits: HeadLimits,
    reads: &[&[u8]],
) -> (Vec<Result<usize, u16>>, bool) {
    let mut g = Guarded::new(inner, limits, None);
    let mut out = Vec::with_capacity(reads.len());
    for r in reads {
        if g.phase == Phase::Body {
            break;
        }
        let res = g.scan(r).map_err(|(code, _)| code);
        out.push(res);
        if res.is_err() {
            break;
        }
    }
    (out, g.phase == Phase::Body)
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
