//! Request mirroring (shadow traffic): a copy of a share of a route's requests goes to
//! another upstream, and its answer is thrown away, as Envoy's `request_mirror_policies`
//! and nginx's `mirror` do. What is decided here, for every engine:
//!
//! - which requests: `percent` of the route's, spread evenly by a counter (with 10, the
//!   10th, 20th, ... request), deterministic rather than random so a test or a small
//!   sample gets exactly its share; never a WebSocket handshake;
//! - what is sent: the request as it goes to the primary backend (method, target, fields
//!   after the policy's edits, body), over HTTP/1.1 with `Connection: close`;
//! - whether it fits: a body over [`MIRROR_BODY_LIMIT`] is not mirrored at all, and a copy
//!   over the mirror upstream's [`DEFAULT_MIRROR_MAX_IN_FLIGHT`] copies in flight (over all
//!   the routes mirroring to it) is dropped; both counted in `stepstone_mirror_dropped_total`
//!   (the pool's [`crate::upstream::shadow::ShadowStats`]).
//!
//! The engines call it once the request was routed and admitted, and hand the copy to the
//! sender in the network layer, which runs on its own task: its answer and its errors
//! never reach the client, and the client's response never waits for it.

use crate::upstream::Pool;
use pingora_http::RequestHeader;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Largest request body mirrored, as much as the copy holds in memory.
pub const MIRROR_BODY_LIMIT: u64 = 64 << 10;
/// Copies in flight to one mirror upstream at most; beyond, they are dropped.
pub const DEFAULT_MIRROR_MAX_IN_FLIGHT: usize = 64;

/// A route's mirror, shared by the members of a split route.
pub struct Mirror {
    pub pool: Arc<Pool>,
    percent: u64,
    seen: AtomicU64,
    max_inflight: usize,
}

/// A copy that may be sent: it holds its place among the copies in flight.
pub struct Permit {
    pub mirror: Arc<Mirror>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.mirror.pool.shadow.inflight.fetch_sub(1, Relaxed);
    }
}

impl Mirror {
    pub fn new(pool: Arc<Pool>, percent: u32) -> Mirror {
        pool.shadow.used.store(true, Relaxed);
        Mirror {
            pool,
            percent: percent.min(100) as u64,
            seen: AtomicU64::new(0),
            max_inflight: DEFAULT_MIRROR_MAX_IN_FLIGHT,
        }
    }

    /// Whether this request is one of the sampled `percent`. `upgrade`: a handshake the
    /// proxy relays, which is never copied.
    pub fn sample(&self, upgrade: bool) -> bool {
        if upgrade || self.percent == 0 {
            return false;
        }
        let n = self.seen.fetch_add(1, Relaxed);
        (n + 1) * self.percent / 100 > n * self.percent / 100
    }

    /// Whether a body of `len` bytes fits the bound; counted when it does not.
    pub fn fits(&self, len: u64) -> bool {
        let ok = len <= MIRROR_BODY_LIMIT;
        if !ok {
            self.pool.shadow.too_large.fetch_add(1, Relaxed);
        }
        ok
    }

    /// A place among the copies in flight, counted as a copy sent; `None` (counted as
    /// dropped) when they are at their bound.
    pub fn admit(self: &Arc<Self>) -> Option<Permit> {
        let max = self.max_inflight;
        let stats = &self.pool.shadow;
        if stats
            .inflight
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            stats.concurrency.fetch_add(1, Relaxed);
            return None;
        }
        stats.requests.fetch_add(1, Relaxed);
        Some(Permit {
            mirror: self.clone(),
        })
    }
}

/// The copy of a request the lean engine writes upstream as bytes (head, then the whole
/// body): the same bytes with `Connection: close`.
pub fn h1_copy(out: &[u8]) -> Vec<u8> {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |i| i + 2);
    let mut c = Vec::with_capacity(out.len() + 19);
    c.extend_from_slice(&out[..end]);
    c.extend_from_slice(b"connection: close\r\n");
    c.extend_from_slice(&out[end..]);
    c
}

/// The selection hash of a copy for the mirror upstream's own `hash_key`, read from the
/// copy (an HTTP/1.1 head): its target, its fields and cookies, and for `client_ip` the last
/// `X-Forwarded-For` entry, which the proxy appended for the client. 0 unless the mirror
/// upstream selects by consistent hash; a head that does not parse hashes to 0 too.
pub fn hash_of_copy(pool: &Pool, copy: &[u8]) -> u64 {
    if pool.selection != crate::config::Selection::ConsistentHash {
        return 0;
    }
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    if !matches!(req.parse(copy), Ok(httparse::Status::Complete(_))) {
        return 0;
    }
    let field = |name: &str| {
        req.headers
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    };
    let client = field("x-forwarded-for")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse().ok());
    let cookies = req
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("cookie"))
        .map(|f| f.value);
    crate::policy::hash::key(
        &pool.hash_key,
        client,
        req.path.unwrap_or("/"),
        field,
        cookies,
    )
}

/// A copy whose body is still arriving (the general engine sees it in pieces).
pub struct Pending {
    mirror: Arc<Mirror>,
    /// The request head after the policy's edits.
    head: Box<RequestHeader>,
    host: Option<String>,
    body: Vec<u8>,
}

impl Pending {
    pub fn new(mirror: Arc<Mirror>, head: RequestHeader, host: Option<&str>) -> Pending {
        Pending {
            mirror,
            head: Box::new(head),
            host: host.map(str::to_owned),
            body: Vec::new(),
        }
    }

    /// Add a piece of the body; `false` (counted) when the body outgrew the bound and the
    /// copy is abandoned.
    pub fn push(&mut self, data: &[u8]) -> bool {
        let len = (self.body.len() + data.len()) as u64;
        if !self.mirror.fits(len) {
            return false;
        }
        self.body.extend_from_slice(data);
        true
    }

    /// The copy, ready to send, once the body is complete.
    pub fn finish(self) -> Option<(Permit, Vec<u8>)> {
        let permit = self.mirror.admit()?;
        Some((
            permit,
            h1_bytes(&self.head, self.host.as_deref(), &self.body),
        ))
    }
}

/// A header-map request as HTTP/1.1 bytes with `Connection: close`: the framing fields are
/// written anew for the whole body, and a `Host` from the target's authority (HTTP/2) when
/// the request has none.
fn h1_bytes(req: &RequestHeader, host: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + body.len());
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.headers.contains_key(http::header::HOST) {
        if let Some(h) = host {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    for (k, v) in req.headers.iter() {
        if k == http::header::CONTENT_LENGTH
            || k == http::header::TRANSFER_ENCODING
            || k == http::header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || req.headers.contains_key(http::header::CONTENT_LENGTH) {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn mirror(percent: u32) -> Arc<Mirror> {
        let y = "listeners: [{name: web, address: 127.0.0.1:1, protocol: http}]\nupstreams: [{name: shadow, backends: [{address: 127.0.0.1:1}]}]\n";
        let pool = Arc::new(Pool::new(
            &Config::from_yaml("t.yaml", y).expect("valid").upstreams[0],
        ));
        Arc::new(Mirror::new(pool, percent))
    }

    #[test]
    fn sampling_takes_exactly_the_share_evenly() {
        let m = mirror(10);
        let picks: Vec<usize> = (0..100).filter(|_| m.sample(false)).collect();
        assert_eq!(picks, vec![9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);
        let all = mirror(100);
        assert!((0..50).all(|_| all.sample(false)));
        assert!(!all.sample(true), "handshakes are not copied");
        let none = mirror(0);
        assert!((0..50).all(|_| !none.sample(false)));
    }

    #[test]
    fn bounds_on_body_and_copies_in_flight() {
        let m = mirror(100);
        assert!(m.fits(MIRROR_BODY_LIMIT));
        assert!(!m.fits(MIRROR_BODY_LIMIT + 1));
        assert_eq!(m.pool.shadow.too_large.load(Relaxed), 1);
        let held: Vec<Permit> = (0..DEFAULT_MIRROR_MAX_IN_FLIGHT)
            .map(|_| m.admit().expect("under the bound"))
            .collect();
        assert!(m.admit().is_none());
        assert_eq!(m.pool.shadow.concurrency.load(Relaxed), 1);
        drop(held);
        assert!(m.admit().is_some());
    }

    #[test]
    fn copies_close_their_connection_and_keep_the_request() {
        let c = h1_copy(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi");
        assert_eq!(
            c,
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi"
        );
        let mut req = RequestHeader::build("PUT", b"/b?q=1", None).expect("req");
        req.insert_header("transfer-encoding", "chunked")
            .expect("te");
        req.insert_header("x-a", "1").expect("x-a");
        let mut p = Pending::new(mirror(100), req, Some("app.test"));
        assert!(p.push(b"abc"));
        let (_permit, bytes) = p.finish().expect("admitted");
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            "PUT /b?q=1 HTTP/1.1\r\nhost: app.test\r\nx-a: 1\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc"
        );
    }

    /// A mirror upstream that selects by consistent hash spreads copies by its own key, as
    /// its primary traffic would be, instead of sending them all to one backend.
    #[test]
    fn consistent_hash_mirrors_hash_the_copy_by_their_own_key() {
        let y = "listeners: [{name: web, address: 127.0.0.1:1, protocol: http}]
upstreams:
  - name: shadow
    selection: consistent_hash
    hash_key: uri
    backends: [{address: 127.0.0.1:1}, {address: 127.0.0.1:2}, {address: 127.0.0.1:3}, {address: 127.0.0.1:4}]
  - name: by_ip
    selection: consistent_hash
    hash_key: client_ip
    backends: [{address: 127.0.0.1:1}, {address: 127.0.0.1:2}]
";
        let cfg = Config::from_yaml("t.yaml", y).expect("valid");
        let pool = Pool::new(&cfg.upstreams[0]);
        let mut picked = std::collections::HashSet::new();
        for i in 0..64 {
            let copy = format!("GET /item/{i} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let h = hash_of_copy(&pool, copy.as_bytes());
            assert_eq!(
                h,
                crate::upstream::select::hash_bytes(format!("/item/{i}").as_bytes())
            );
            picked.insert(pool.select(h, 0).expect("a backend").slot.addr);
        }
        assert!(picked.len() > 1, "every copy went to {picked:?}");
        let by_ip = Pool::new(&cfg.upstreams[1]);
        let copy = b"GET / HTTP/1.1\r\nx-forwarded-for: 10.0.0.1, 192.0.2.7\r\n\r\n";
        assert_eq!(
            hash_of_copy(&by_ip, copy),
            crate::policy::hash::client_ip(Some("192.0.2.7".parse().expect("ip")))
        );
        assert_eq!(hash_of_copy(&by_ip, b"not http"), 0);
    }
}
