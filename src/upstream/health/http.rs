//! The HTTP check: a GET, judged by the status of its answer, over HTTP/1.1 or, for `http2`
//! upstreams, HTTP/2 ([`super::h2`]); plain or over TLS.
//!
//! Pingora's `HttpHealthCheck` is not used. It cost too much: it builds a `TransportConnector`
//! with a TLS context (the system's CA bundle read and parsed) per upstream, 26 ms of CPU each
//! at start (13 s for 500 upstreams, and again for each upstream a reload rebuilds), and each
//! check went through the connector's stream setup and closed with a FIN, which left a
//! TIME_WAIT socket on the proxy per check. Over TLS the connection comes from the connector
//! that all TLS checks share ([`super::tls`]).
//!
//! Here a check is one small write and a read of the response head. With `reuse_connection`
//! off (the default, as HAProxy and nginx check) each check opens a connection, which also
//! proves that the backend still accepts them, asks for `Connection: close`, and resets the
//! connection once the status is read. With it on (as Envoy checks) the connection is kept
//! for the next check when the body's length is known; a kept connection that the backend
//! closed meanwhile is replaced by a new one within the same check, so a backend's idle
//! timeout never counts as a failure.

use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr as Addr;
use pingora_core::{Error, ErrorType, OrErr};
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::Backend;
use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest response head read; a health endpoint's answer is far shorter.
const MAX_HEAD: usize = 16 * 1024;
/// The most response fields read.
const MAX_FIELDS: usize = 64;
/// The longest body read to keep the connection; a longer one is cut off with it.
const MAX_DRAIN: u64 = 64 * 1024;

pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A check's connection.
enum Conn {
    H1(Box<dyn Io>),
    H2(super::h2::H2),
}

/// Kept connections, one per backend, and when each was last used.
struct Idle {
    conns: HashMap<Addr, (Conn, Instant)>,
    pruned: Instant,
}

pub(super) struct HttpCheck {
    /// The whole request, written as is.
    request: Box<[u8]>,
    expect: u16,
    timeout: Duration,
    /// A connection not used for this long belongs to a backend no longer checked.
    stale_after: Duration,
    reuse: bool,
    idle: Mutex<Idle>,
    thresholds: super::Thresholds,
    /// How to reach a TLS backend; `None` for plain ones.
    tls: Option<super::tls::Dial>,
    /// HTTP/2 in cleartext (h2c), by prior knowledge; over TLS, ALPN decides.
    h2c: bool,
    /// The target of a request over HTTP/2: scheme, authority and path.
    h2_uri: http::Uri,
}

/// Why a check failed.
pub(super) enum Fail {
    /// The connection ended (or failed) before any byte of a response: on a kept connection,
    /// the backend closed it while idle.
    Unanswered(Option<io::Error>),
    Connect(io::Error),
    /// The connect or the TLS handshake failed, as Pingora's connector tells it.
    Dial(Box<Error>),
    Io(io::Error),
    Head(String),
    Status(u16),
}

impl HttpCheck {
    pub(super) fn new(
        h: &crate::config::HealthSpec,
        u: &crate::config::UpstreamSpec,
    ) -> pingora_core::Result<HttpCheck> {
        let close = if h.reuse_connection {
            ""
        } else {
            "Connection: close\r\n"
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: stepstone-health-check\r\n{close}\r\n",
            h.path, h.host
        );
        let scheme = if u.tls.is_some() { "https" } else { "http" };
        // the config's check (`-t`) refuses a host or path that cannot make one
        let h2_uri = http::Uri::try_from(format!("{scheme}://{}{}", h.host, h.path))
            .or_err_with(ErrorType::InternalError, || {
                format!("health check host {:?} and path {:?}", h.host, h.path)
            })?;
        Ok(HttpCheck {
            request: request.into_bytes().into_boxed_slice(),
            expect: h.expect_status,
            timeout: h.timeout,
            stale_after: h.interval * 3 + h.timeout,
            reuse: h.reuse_connection,
            idle: Mutex::new(Idle {
                conns: HashMap::new(),
                pruned: Instant::now(),
            }),
            thresholds: super::Thresholds::of(h),
            tls: u.tls.as_ref().map(|_| super::tls::Dial::new(h, u)),
            h2c: u.http2 && u.tls.is_none(),
            h2_uri,
        })
    }

    fn take(&self, a: &Addr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.conns.remove(a).map(|(c, _)| c)
    }

    fn keep(&self, a: Addr, c: Conn) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(idle.pruned) > self.stale_after {
            let horizon = self.stale_after;
            idle.conns
                .retain(|_, (_, used)| now.duration_since(*used) <= horizon);
            idle.pruned = now;
        }
        idle.conns.insert(a, (c, now));
    }

    async fn run(&self, a: &Addr) -> Result<(), Fail> {
        if let Some(c) = self.take(a) {
            match self.ask(c).await {
                Ok(kept) => {
                    if let Some(c) = kept {
                        self.keep(a.clone(), c);
                    }
                    return Ok(());
                }
                // closed by the backend while it idled: ask again on a new connection
                Err(Fail::Unanswered(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // the connect's failure, learnt from the first write (the request, or HTTP/2's
        // preface)
        let refused = |f| match f {
            Fail::Unanswered(Some(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Fail::Connect(e)
            }
            f => f,
        };
        let c = self.open(a).await.map_err(refused)?;
        let kept = self.ask(c).await.map_err(refused)?;
        if let Some(c) = kept.filter(|_| self.reuse) {
            self.keep(a.clone(), c);
        }
        Ok(())
    }

    /// A new connection to `a`, speaking what the upstream's requests do.
    async fn open(&self, a: &Addr) -> Result<Conn, Fail> {
        let (io, h2): (Box<dyn Io>, bool) = match &self.tls {
            Some(d) => {
                let s = d.connect(a).await.map_err(Fail::Dial)?;
                let h2 = s.selected_alpn_proto() == Some(pingora_core::protocols::ALPN::H2);
                (Box::new(s), h2)
            }
            None => (connect(a).await.map_err(Fail::Connect)?, self.h2c),
        };
        if h2 {
            Ok(Conn::H2(super::h2::handshake(io).await?))
        } else {
            Ok(Conn::H1(io))
        }
    }

    /// One check on `c`; `c` back when it can serve the next one.
    async fn ask(&self, c: Conn) -> Result<Option<Conn>, Fail> {
        match c {
            Conn::H1(mut io) => Ok(self.exchange(&mut io).await?.then_some(Conn::H1(io))),
            Conn::H2(send) => Ok(Some(Conn::H2(
                super::h2::ask(send, &self.h2_uri, self.expect).await?,
            ))),
        }
    }

    /// Send the request and read the answer on `c`; `true` when `c` can be used again.
    async fn exchange(&self, c: &mut Box<dyn Io>) -> Result<bool, Fail> {
        c.write_all(&self.request)
            .await
            .map_err(|e| Fail::Unanswered(Some(e)))?;
        let mut buf = Vec::with_capacity(1024);
        let (code, keep, left) = loop {
            match parse(&buf)? {
                // an interim response (100 Continue, 103 Early Hints): the final one follows
                Some(h) if (100..200).contains(&h.code) && h.code != 101 => {
                    buf.drain(..h.len);
                    continue;
                }
                Some(h) => {
                    buf.drain(..h.len);
                    break (h.code, h.keep, h.body);
                }
                None if buf.len() >= MAX_HEAD => {
                    return Err(Fail::Head(format!(
                        "response head longer than {MAX_HEAD} bytes"
                    )));
                }
                None => {}
            }
            if read_more(c, &mut buf).await? == 0 {
                return Err(if buf.is_empty() {
                    Fail::Unanswered(None)
                } else {
                    Fail::Head("the connection closed within the response head".into())
                });
            }
        };
        if code != self.expect {
            return Err(Fail::Status(code));
        }
        // The body is read only to keep the connection; without reuse the status is all.
        let Some(len) = left.filter(|n| self.reuse && keep && *n <= MAX_DRAIN) else {
            return Ok(false);
        };
        let mut have = buf.len() as u64;
        if have > len {
            return Ok(false);
        }
        while have < len {
            buf.clear();
            let n = read_more(c, &mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            have += n as u64;
        }
        Ok(have == len)
    }
}

async fn read_more(c: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Result<usize, Fail> {
    buf.reserve(1024);
    match c.read_buf(buf).await {
        Ok(n) => Ok(n),
        Err(e) if buf.is_empty() => Err(Fail::Unanswered(Some(e))),
        Err(e) => Err(Fail::Io(e)),
    }
}

/// A response head: its length, status, whether the connection may stay open, and the body's
/// length when it is known from the head.
struct Head {
    len: usize,
    code: u16,
    keep: bool,
    body: Option<u64>,
}

fn parse(buf: &[u8]) -> Result<Option<Head>, Fail> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut r = httparse::Response::new(&mut fields);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Fail::Head(format!("bad response head: {e}"))),
    };
    let code = r.code.unwrap_or(0);
    let mut keep = r.version == Some(1);
    let mut body = if code == 204 || code == 304 {
        Some(0)
    } else {
        None
    };
    for f in r.headers.iter() {
        if f.name.eq_ignore_ascii_case("content-length") {
            let n: Option<u64> = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            // an unreadable length, or two that differ: the body's end is not known
            match (n, body) {
                (Some(n), None) => body = Some(n),
                (Some(n), Some(b)) if n == b => {}
                _ => keep = false,
            }
        } else if f.name.eq_ignore_ascii_case("transfer-encoding")
            || (f.name.eq_ignore_ascii_case("connection") && f.value.eq_ignore_ascii_case(b"close"))
        {
            keep = false;
        }
    }
    Ok(Some(Head {
        len,
        code,
        keep,
        body,
    }))
}

async fn connect(a: &Addr) -> io::Result<Box<dyn Io>> {
    match a {
        // The handshake is not waited for: the write waits until the socket is writable,
        // and fails if the connect did. No TCP_NODELAY either: the request is one write.
        Addr::Inet(a) => {
            let (s, _) = super::tcp::begin(*a, false)?;
            let s = tokio::net::TcpStream::from_std(std::net::TcpStream::from(s))?;
            Ok(Box::new(s))
        }
        Addr::Unix(a) => match a.as_pathname() {
            Some(p) => Ok(Box::new(tokio::net::UnixStream::connect(p).await?)),
            None => Err(io::ErrorKind::InvalidInput.into()),
        },
    }
}

#[async_trait]
impl HealthCheck for HttpCheck {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        let why = match tokio::time::timeout(self.timeout, self.run(&target.addr)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(f)) => match f {
                Fail::Connect(e) => {
                    return Err(Error::because(ErrorType::ConnectError, "connect", e))
                }
                Fail::Dial(e) => return Err(e),
                Fail::Unanswered(Some(e)) | Fail::Io(e) => format!("{e}"),
                Fail::Unanswered(None) => "the connection closed before a response".into(),
                Fail::Head(s) => s,
                Fail::Status(code) => format!("got {code}, expected {}", self.expect),
            },
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        Error::e_explain(ErrorType::Custom("health check"), why)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.thresholds.pick(success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        match parse(raw.as_bytes()) {
            Ok(Some(h)) => h,
            Ok(None) => panic!("incomplete: {raw:?}"),
            Err(_) => panic!("refused: {raw:?}"),
        }
    }

    /// Only a body whose end the head tells lets the connection serve the next check.
    #[test]
    fn the_head_tells_whether_the_connection_can_serve_again() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!((h.code, h.keep, h.body, h.len), (200, true, Some(2), 38));
        let h = head("HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.code, h.keep), (503, false));
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n");
        assert!(!h.keep);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
        assert!(!h.keep);
        let h = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((h.keep, h.body), (true, Some(0)));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n");
        assert!(!h.keep);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n");
        assert!(!h.keep);
        // no length: the body runs to the close
        assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n").body, None);
    }

    #[test]
    fn a_partial_head_waits_and_a_bad_one_fails() {
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\nContent-"), Ok(None)));
        assert!(matches!(parse(b""), Ok(None)));
        assert!(matches!(parse(b"SMTP ready\r\n\r\n"), Err(Fail::Head(_))));
    }
}
