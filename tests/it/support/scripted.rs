//! The scripted origin and the comparison helpers the differential tests share: the same
//! requests through a listener on the lean engine and one with `fast_path: false` (Pingora's
//! general proxy for everything), over HTTP/1 (`differential`) and HTTP/2 (`differential_h2`).
//!
//! The origin speaks HTTP/1.1 and answers by path with the response shapes an edge meets
//! (chunked, repeated Set-Cookie, hop-by-hop fields, 1xx before the final answer,
//! close-delimited, slow, 204, large), and records each request as it arrived.

use super::Proxy;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the origin received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Lower-cased names, values as sent, in order, repeats kept.
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct OriginState {
    seen: Mutex<Vec<Seen>>,
}

/// The scripted origin.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
}

impl Origin {
    pub async fn start() -> Origin {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = l.local_addr().expect("origin addr");
        let state = Arc::new(OriginState::default());
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, st.clone()));
            }
        });
        Origin { addr, state }
    }

    /// The requests seen since the last call, in arrival order.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.state.seen.lock().expect("seen"))
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read one request (head, then a Content-Length or chunked body) from `buf` + `s`.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let mut rl = lines.next()?.split(' ');
    let (method, target) = (rl.next()?.to_string(), rl.next()?.to_string());
    let fields: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        body = buf.drain(..len).collect();
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if size == 0 {
                buf.drain(..2);
                break;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    }
    Some(Seen {
        method,
        target,
        fields,
        body,
    })
}

async fn serve(mut s: TcpStream, st: Arc<OriginState>) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut s, &mut buf).await {
        let path = req.target.split('?').next().unwrap_or("").to_string();
        let head_only = req.method == "HEAD";
        st.seen.lock().expect("seen").push(req.clone());
        let body_of = |b: &str| {
            if head_only {
                String::new()
            } else {
                b.to_string()
            }
        };
        // `/raw`: the response is the request's own, hex in X-Raw-Response, written as it
        // is; X-Raw-Close: the connection ends after it (a close-delimited body)
        let field = |n: &str| {
            req.fields
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        if let (true, Some(hex)) = (path == "/raw", field("x-raw-response")) {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            if s.write_all(&bytes).await.is_err() || field("x-raw-close").is_some() {
                return;
            }
            continue;
        }
        let out: String = match path.as_str() {
            "/chunked" => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                if head_only { "" } else { "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" }
            ),
            "/te-nominated" => format!(
                "HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding, X-Drop\r\nX-Drop: 1\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                if head_only { "" } else { "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" }
            ),
            // chunked before another coding, and chunked twice: refused (502)
            "/te-not-last" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_string(),
            "/te-twice" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_string(),
            "/cookies" => format!(
                "HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; HttpOnly\r\nContent-Length: 2\r\n\r\n{}",
                body_of("ok")
            ),
            // a field called `close` beside `Connection: close`: named by a connection
            // option, so hop-by-hop (RFC 9110 §7.6.1)
            "/close-field" => format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nClose: x-named\r\nX-Public: yes\r\nContent-Length: 2\r\n\r\n{}",
                body_of("ok")
            ),
            "/hop" => format!(
                "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nConnection: X-Private\r\nX-Private: secret\r\nX-Public: yes\r\nContent-Length: 2\r\n\r\n{}",
                body_of("ok")
            ),
            "/early" => format!(
                "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                body_of("ok")
            ),
            "/continue" => format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                body_of("ok")
            ),
            "/close" => {
                let b = body_of("until the end");
                let _ = s
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{b}").as_bytes())
                    .await;
                return;
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", body_of("ok"))
            }
            "/nocontent" => "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n".to_string(),
            "/cl-list" => format!("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}", body_of("ok")),
            "/cl-twice" => format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 02\r\n\r\n{}",
                body_of("ok")
            ),
            "/bad-chunk-ext" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a\x01b\r\nabc\r\n0\r\n\r\n".to_string(),
            "/bad-trailer" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: a\x00b\r\n\r\n".to_string(),
            "/late-body" => {
                // a body after a response that has none: HEAD, 204
                let status = if head_only { "200 OK" } else { "204 No Content" };
                format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\nLATE!")
            }
            "/status-600" => format!("HTTP/1.1 600 Weird\r\nContent-Length: 2\r\n\r\n{}", body_of("ok")),
            "/upgrade" => {
                // a protocol switch other than WebSocket: 101, then bytes of the new protocol
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo/1\r\n\r\nfoo-hello")
                    .await;
                return;
            }
            // answered 503 every time: a retry goes back to this one origin
            "/503" => {
                let b = format!("unavailable, {} bytes", req.body.len());
                format!("HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n{}", b.len(), body_of(&b))
            }
            // the connection closes before any answer
            "/reset" => return,
            // as /echo, 300 ms after the request was in
            "/echo-late" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let b = format!("{} bytes", req.body.len());
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", b.len(), body_of(&b))
            }
            "/echo" => {
                let b = format!("{} bytes", req.body.len());
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", b.len(), body_of(&b))
            }
            "/big" => {
                let b = "x".repeat(100_000);
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", b.len(), body_of(&b))
            }
            _ => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-Origin: scripted\r\n\r\n{}",
                body_of("hello")
            ),
        };
        if s.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A response as the client saw it: status, fields (lower-cased names, `Date` masked,
/// sorted by [`normalized`]), body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response field as compared: the name lower-cased, the value trimmed, a `Date` value
/// masked (it is compared by presence only).
pub fn field(name: &str, value: &str) -> (String, String) {
    let k = name.to_ascii_lowercase();
    let v = if k == "date" {
        "<date>".into()
    } else {
        value.trim().to_string()
    };
    (k, v)
}

/// Field order between different names carries no meaning (RFC 9110 §5.3); the order of
/// repeats of one name does. Sort by name, stably.
pub fn normalized(mut f: Vec<(String, String)>) -> Vec<(String, String)> {
    f.sort_by(|a, b| a.0.cmp(&b.0));
    f
}

/// The proxy config for the differential tests; `listen` is what every listener's entry says
/// after its address (`protocol: http`, maybe with `h2c: true`).
pub fn config(origin: SocketAddr, listen: &str) -> String {
    config_with(origin, listen, "")
}

/// [`config`] with `main` added to the keys of the main pair of listeners (`, limits: ...`).
pub fn config_with(origin: SocketAddr, listen: &str, main: &str) -> String {
    // Four listeners: {{port}} lean, {{port1}} general, {{port2}} lean with a rate limit,
    // {{port3}} general with a rate limit; the admin listener on {{port4}}
    // ([`differ_route_counters`]). Each listener has the same ROUTES_EACH routes, in order.
    let mut routes = String::new();
    for l in ["fast", "general", "fast_rl", "general_rl"] {
        routes.push_str(&format!(
            "  - {{listener: {l}, host: app.test, upstream: app}}\n  - {{listener: {l}, host: app.test, path_prefix: /small, upstream: app, max_body_size: 10}}\n  - {{listener: {l}, host: dead.test, upstream: dead}}\n  - {{listener: {l}, host: retry.test, upstream: retrying}}\n  - {{listener: {l}, host: sticky.test, upstream: sticky}}\n  - {{listener: {l}, host: gz.test, upstream: app, compression: {{enabled: true}}}}\n  - {{listener: {l}, host: methods.test, upstream: app, methods: [GET, POST, TRACE]}}\n"
        ));
    }
    let dead_addr = super::dead_addr();
    format!(
        "admin: {{address: 127.0.0.1:{{{{port4}}}}}}
listeners:
  - {{name: fast, address: 127.0.0.1:{{{{port}}}}, {listen}{main}}}
  - {{name: general, address: 127.0.0.1:{{{{port1}}}}, {listen}, fast_path: false{main}}}
  - {{name: fast_rl, address: 127.0.0.1:{{{{port2}}}}, {listen}, limits: {{rate_limit_per_ip: 1}}}}
  - {{name: general_rl, address: 127.0.0.1:{{{{port3}}}}, {listen}, fast_path: false, limits: {{rate_limit_per_ip: 1}}}}
upstreams:
  - name: app
    backends: [{{address: {origin}}}]
    read_timeout: 1s
    retries: 0
  - name: dead
    backends: [{{address: {dead_addr}}}]
    retries: 0
  - name: retrying
    backends: [{{address: {origin}}}]
    retries: 1
    retry_on: [reset, \"503\"]
  - name: sticky
    backends: [{{address: {origin}}}]
    sticky: {{cookie: SRV, ttl: 1h}}
routes:
{routes}"
    )
}

/// The routes each listener of [`config_with`] has.
const ROUTES_EACH: usize = 7;

/// Compare the per-route counters of [`config_with`]'s lean listeners with those of their
/// general twins (the same routes, [`ROUTES_EACH`] apart in config order) after the same
/// requests went to both: requests by status class and body bytes each way. The access log
/// and the metrics are the request's record, which the policy makes whichever engine served
/// it. Counters are bumped as a request ends, a moment after its answer: they are read until
/// two scrapes agree.
pub async fn differ_route_counters(diffs: &mut Vec<String>, p: &Proxy) {
    let scrape = || async {
        super::client::get(p.addr_of(4), "/metrics", &[])
            .await
            .expect("admin /metrics answers")
            .text()
    };
    let mut text = scrape().await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let again = scrape().await;
        if route_counters(&again) == route_counters(&text) {
            break;
        }
        text = again;
    }
    let c = route_counters(&text);
    for (lean, general) in [(0, ROUTES_EACH), (2 * ROUTES_EACH, 3 * ROUTES_EACH)] {
        for i in 0..ROUTES_EACH {
            let (a, b) = (lean + i, general + i);
            let mut keys: Vec<&(String, usize)> =
                c.keys().filter(|(_, r)| *r == a || *r == b).collect();
            keys.sort();
            keys.dedup_by_key(|(k, _)| k.clone());
            for (series, _) in keys {
                let get = |r: usize| c.get(&(series.clone(), r)).copied().unwrap_or(0.0);
                if get(a) != get(b) {
                    diffs.push(format!(
                        "{series} of routes[{a}] (lean) and routes[{b}] (general): {} against {}",
                        get(a),
                        get(b)
                    ));
                }
            }
        }
    }
}

/// The request and body-byte counters by (series without its route label, route index).
fn route_counters(text: &str) -> std::collections::BTreeMap<(String, usize), f64> {
    let mut out = std::collections::BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        if !(series.starts_with("stepstone_requests_total{")
            || series.starts_with("stepstone_http_body_bytes_total{"))
        {
            continue;
        }
        let Some(at) = series.find("route=\"routes[") else {
            continue;
        };
        let rest = &series[at + 14..];
        let Some(end) = rest.find(']') else { continue };
        let Ok(route) = rest[..end].parse::<usize>() else {
            continue;
        };
        let label_end = at + 14 + end + 2;
        let key = format!(
            "{}{}",
            &series[..at],
            &series[label_end.min(series.len())..]
        );
        if let Ok(v) = value.parse::<f64>() {
            *out.entry((key, route)).or_insert(0.0) += v;
        }
    }
    out
}

/// Note a difference between what the lean and the general engine gave for one case.
pub fn differ<T: Debug + PartialEq>(
    diffs: &mut Vec<String>,
    case: &str,
    what: &str,
    lean: &T,
    general: &T,
) {
    if lean != general {
        diffs.push(format!(
            "{case}: {what}\n  lean:    {lean:?}\n  general: {general:?}"
        ));
    }
}

/// Note a difference between the requests the origin saw from the two engines. The order of
/// fields of different names carries no meaning (RFC 9110 §5.3) and is not compared; the
/// order of repeats of one name is.
pub fn differ_seen(diffs: &mut Vec<String>, case: &str, lean: &[Seen], general: &[Seen]) {
    let sorted = |s: &[Seen]| {
        s.iter()
            .map(|s| Seen {
                fields: normalized(s.fields.clone()),
                ..s.clone()
            })
            .collect::<Vec<_>>()
    };
    if sorted(lean) != sorted(general) {
        differ(diffs, case, "origin saw", &lean, &general);
    }
}

/// The end of a generated test: most of its cases were answered (else the generator mostly
/// made requests the proxy refuses, and the comparison would prove little), and no case
/// differed.
pub fn assert_answered_and_alike(
    diffs: &[String],
    answered: usize,
    cases: usize,
    what: &str,
    log: &str,
) {
    assert!(
        answered > cases * 9 / 10,
        "only {answered} of {cases} generated {what} were answered"
    );
    assert_alike(diffs, cases, log);
}

/// Fail with every difference at once, and the proxy's log.
pub fn assert_alike(diffs: &[String], cases: usize, log: &str) {
    assert!(
        diffs.is_empty(),
        "{} differences over {} cases:\n{}\n--- proxy log ---\n{}",
        diffs.len(),
        cases,
        diffs.join("\n"),
        log
    );
}
