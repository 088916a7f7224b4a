//! Tunnels, generated: each case opens one to an origin, then both sides send bytes in
//! pieces of generated sizes and end in one of four orders: the client's FIN first (the
//! origin answers after it), the origin's FIN first (the client sends after it), both at
//! once, or the origin closing outright once it has read what the client sent. Bytes depend
//! on their position and direction, so a piece lost, repeated, moved or crossed over shows.
//!
//! - WebSocket upgrades through the lean engine, the general engine (`fast_path: false`) and
//!   the forward proxy (absolute form), the origin answering 101 (sometimes with frames
//!   right behind it). Such a tunnel ends at the first side's close, once what that side sent
//!   is delivered (`policy::UPGRADE_HALF_CLOSE`), alike on all three: the first closer's
//!   bytes arrive whole, the other side's after that close do not, and where both send at
//!   once each side gets a prefix of the other's bytes.
//! - CONNECT tunnels over HTTP/1.1 and over HTTP/2 (RFC 9113 §8.5, END_STREAM as the FIN):
//!   these pass a half-close on, so every byte arrives in every order.

use crate::differential_gen::Gen;
use crate::support::scripted;
use crate::support::{quic, Proxy};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A wait longer than any case's: what has not come by then is not coming.
const PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    /// The client sends and shuts its write half; the origin reads to the end, then answers
    /// and closes.
    ClientFinFirst,
    /// The origin sends and shuts its write half; the client reads to the end, then sends and
    /// shuts.
    OriginFinFirst,
    /// Both send at once; each shuts its write half when done and reads to the end.
    Both,
    /// The client sends without a FIN; the origin reads all of it, answers and closes the
    /// connection; the client reads to the end.
    OriginCloses,
}

#[derive(Debug, Clone)]
struct Tunnel {
    order: Order,
    /// Pieces the client sends, and those the origin sends.
    up: Vec<usize>,
    down: Vec<usize>,
    /// Bytes the origin writes in the same write as its 101.
    early: usize,
}

impl Tunnel {
    fn up_len(&self) -> usize {
        self.up.iter().sum()
    }
    fn down_len(&self) -> usize {
        self.early + self.down.iter().sum::<usize>()
    }
}

/// Case `i` of the run seeded `seed`: the origin makes it again from the request's path.
fn tunnel(seed: u64, i: usize) -> Tunnel {
    let mut g = Gen(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let order = [
        Order::ClientFinFirst,
        Order::OriginFinFirst,
        Order::Both,
        Order::OriginCloses,
    ][(g.next() % 4) as usize];
    let pieces = |g: &mut Gen| -> Vec<usize> {
        let n = g.next() % 6;
        (0..n)
            .map(|_| match g.next() % 4 {
                0 => 1 + (g.next() % 16) as usize,
                1 => 1 + (g.next() % 4096) as usize,
                2 => 16_384 + (g.next() % 3) as usize - 1,
                _ => 1 + (g.next() % 200_000) as usize,
            })
            .collect()
    };
    let up = pieces(&mut g);
    let down = pieces(&mut g);
    let early = if g.chance(3) {
        1 + (g.next() % 2000) as usize
    } else {
        0
    };
    Tunnel {
        order,
        up,
        down,
        early,
    }
}

/// Byte `at` of the stream going `up` (client to origin) or down.
fn stream(up: bool, from: usize, n: usize) -> Vec<u8> {
    const CYCLE: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ!";
    let salt = if up { 0 } else { 31 };
    (from..from + n)
        .map(|i| CYCLE[(i / 7 + i + salt) % CYCLE.len()])
        .collect()
}

/// Write `pieces` of the stream, from byte `from`, one write each with a yield between.
async fn send(s: &mut (impl AsyncWriteExt + Unpin), up: bool, from: usize, pieces: &[usize]) {
    let mut at = from;
    for &n in pieces {
        if s.write_all(&stream(up, at, n)).await.is_err() {
            return;
        }
        at += n;
        tokio::task::yield_now().await;
    }
}

/// Read until the peer's FIN (or `limit` bytes, or an error, or [`PATIENCE`]); how it ended.
async fn drain(
    s: &mut (impl AsyncReadExt + Unpin),
    out: &mut Vec<u8>,
    limit: usize,
) -> &'static str {
    let mut buf = vec![0u8; 64 << 10];
    while out.len() < limit {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(0)) => return "fin",
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return "error",
            Err(_) => return "stalled",
        }
    }
    "limit"
}

/// One side's part in a case's order of closing.
#[derive(Clone, Copy)]
enum Part {
    /// Send, shut the write half if `shut`, then read to the end.
    Lead { shut: bool },
    /// Read to the end (or `limit` bytes), then send and shut the write half.
    Follow { limit: usize },
    /// Send (then shut) and read at once.
    Both,
}

impl Tunnel {
    fn client_part(&self) -> Part {
        match self.order {
            Order::ClientFinFirst => Part::Lead { shut: true },
            Order::OriginFinFirst => Part::Follow { limit: usize::MAX },
            Order::Both => Part::Both,
            Order::OriginCloses => Part::Lead { shut: false },
        }
    }

    /// The origin closes right after its part, so a Follow's shut is its close's FIN.
    fn origin_part(&self) -> Part {
        match self.order {
            Order::ClientFinFirst => Part::Follow { limit: usize::MAX },
            Order::OriginFinFirst => Part::Lead { shut: true },
            Order::Both => Part::Both,
            Order::OriginCloses => Part::Follow {
                limit: self.up_len(),
            },
        }
    }
}

/// Play `part` on `s`: send `pieces` of the stream going `up` (or down) from byte `from`,
/// read into `out`; how the reading ended.
async fn act(
    mut s: impl AsyncRead + AsyncWrite + Unpin,
    part: Part,
    up: bool,
    from: usize,
    pieces: &[usize],
    out: &mut Vec<u8>,
) -> &'static str {
    match part {
        Part::Lead { shut } => {
            send(&mut s, up, from, pieces).await;
            if shut {
                let _ = s.shutdown().await;
            }
            drain(&mut s, out, usize::MAX).await
        }
        Part::Follow { limit } => {
            let e = drain(&mut s, out, limit).await;
            send(&mut s, up, from, pieces).await;
            let _ = s.shutdown().await;
            e
        }
        Part::Both => {
            let (mut r, mut w) = tokio::io::split(s);
            let (e, _) = tokio::join!(drain(&mut r, out, usize::MAX), async {
                send(&mut w, up, from, pieces).await;
                let _ = w.shutdown().await;
            });
            e
        }
    }
}

/// What the origin saw of one tunnel: the tunnel's tag (`N-L`: case N through listener L),
/// the bytes and how its reading ended.
type OriginView = (String, Vec<u8>, &'static str);

/// The tunnel origin. An HTTP request for `/t/N-L` is answered with a 101 and case N played;
/// a connection that starts with a line `N-L` (a CONNECT tunnel's first bytes) plays case N
/// at once. Reports what it read after the request or the line.
async fn origin(seed: u64) -> (SocketAddr, mpsc::UnboundedReceiver<OriginView>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(view) = play_origin(s, seed).await {
                    let _ = tx.send(view);
                }
            });
        }
    });
    (addr, rx)
}

async fn play_origin(mut s: TcpStream, seed: u64) -> Option<OriginView> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // an HTTP request ends with an empty line, a tag with its line
    let end = loop {
        let upgrade = got.starts_with(b"GET ");
        let mark: &[u8] = if upgrade { b"\r\n\r\n" } else { b"\n" };
        if got.len() >= 4 {
            if let Some(at) = scripted::find(&got, mark) {
                break at + mark.len();
            }
        }
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let upgrade = head.starts_with("GET ");
    let tag = match upgrade {
        true => head.split("/t/").nth(1)?.split(' ').next()?.to_string(),
        false => head.trim().to_string(),
    };
    let t = tunnel(seed, tag.split('-').next()?.parse().ok()?);
    let mut read = got[end..].to_vec();
    let mut first = Vec::new();
    if upgrade {
        first.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
    }
    first.extend_from_slice(&stream(false, 0, t.early));
    s.write_all(&first).await.ok()?;
    let ended = act(s, t.origin_part(), false, t.early, &t.down, &mut read).await;
    Some((tag, read, ended))
}

/// What the client saw: the status code, the bytes after the response head, and how its
/// reading ended.
#[derive(Debug, PartialEq)]
struct ClientView {
    status: String,
    down: Vec<u8>,
    ended: &'static str,
}

/// A connection to a listener, over TLS or not.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn dial(proxy: SocketAddr, tls: bool) -> Option<Box<dyn Io>> {
    let tcp = TcpStream::connect(proxy).await.ok()?;
    if !tls {
        return Some(Box::new(tcp));
    }
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).ok()?;
    b.set_verify(SslVerifyMode::NONE);
    let ssl = b.build().configure().ok()?.into_ssl("app.test").ok()?;
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).ok()?;
    tokio::time::timeout(PATIENCE, std::pin::Pin::new(&mut s).connect())
        .await
        .ok()?
        .ok()?;
    Some(Box::new(s))
}

/// `target`: the origin's address for the forward proxy (absolute form), or none.
async fn play_client(
    proxy: SocketAddr,
    tls: bool,
    target: Option<SocketAddr>,
    tag: &str,
    t: &Tunnel,
) -> ClientView {
    let Some(s) = dial(proxy, tls).await else {
        return failed("connect");
    };
    let (path, host) = match target {
        Some(o) => (format!("http://{o}/t/{tag}"), o.to_string()),
        None => (format!("/t/{tag}"), "app.test".to_string()),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    opened_h1(s, &req, "101", None, t).await
}

fn failed(why: &'static str) -> ClientView {
    ClientView {
        status: String::new(),
        down: Vec::new(),
        ended: why,
    }
}

/// Send the request `req` that opens a tunnel; if the answer's status is `opened`, send
/// `tag` (a CONNECT tunnel's first line, which the origin waits for) and play case `t`'s
/// client side in it.
async fn opened_h1(
    mut s: Box<dyn Io>,
    req: &str,
    opened: &str,
    tag: Option<&str>,
    t: &Tunnel,
) -> ClientView {
    if s.write_all(req.as_bytes()).await.is_err() {
        return failed("write");
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = scripted::find(&got, b"\r\n\r\n") {
            break at + 4;
        }
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return failed("no head"),
        }
    };
    let status = String::from_utf8_lossy(&got[..end])
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let down = got[end..].to_vec();
    if status != opened {
        return ClientView {
            status,
            down,
            ended: "refused",
        };
    }
    if let Some(tag) = tag {
        if s.write_all(format!("{tag}\n").as_bytes()).await.is_err() {
            return failed("write");
        }
    }
    play(s, status, down, t).await
}

/// The client's side of case `t` in an open tunnel `s`; `down`: what came with the answer.
async fn play(
    s: impl AsyncRead + AsyncWrite + Unpin,
    status: String,
    mut down: Vec<u8>,
    t: &Tunnel,
) -> ClientView {
    let ended = act(s, t.client_part(), true, 0, &t.up, &mut down).await;
    ClientView {
        status,
        down,
        ended,
    }
}

/// A CONNECT tunnel over HTTP/1.1 to the origin `o`, tagged `tag`, playing case `t`.
async fn connect_h1(proxy: SocketAddr, o: SocketAddr, tag: &str, t: &Tunnel) -> ClientView {
    let Some(s) = dial(proxy, false).await else {
        return failed("connect");
    };
    let req = format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\n\r\n");
    opened_h1(s, &req, "200", Some(tag), t).await
}

/// A CONNECT tunnel over HTTP/2 (h2c) to the origin `o`: the stream is bridged to a byte
/// stream (DATA both ways, END_STREAM as the FIN, a reset as an error) and case `t` played
/// in it.
async fn connect_h2(proxy: SocketAddr, o: SocketAddr, tag: &str, t: &Tunnel) -> ClientView {
    let Ok(tcp) = TcpStream::connect(proxy).await else {
        return failed("connect");
    };
    let Ok((client, conn)) = h2::client::handshake(tcp).await else {
        return failed("h2 handshake");
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let Ok(mut client) = client.ready().await else {
        return failed("h2 ready");
    };
    let Ok(req) = http::Request::builder()
        .method("CONNECT")
        .uri(o.to_string())
        .body(())
    else {
        return failed("request");
    };
    let Ok((resp, mut tx)) = client.send_request(req, false) else {
        return failed("send");
    };
    let resp = match tokio::time::timeout(PATIENCE, resp).await {
        Ok(Ok(r)) => r,
        _ => return failed("no head"),
    };
    let status = resp.status().as_u16().to_string();
    if status != "200" {
        return ClientView {
            status,
            down: Vec::new(),
            ended: "refused",
        };
    }
    let mut rx = resp.into_body();
    let (mine, theirs) = tokio::io::duplex(256 << 10);
    let (mut from_play, mut to_play) = tokio::io::split(theirs);
    if tx
        .send_data(bytes::Bytes::from(format!("{tag}\n")), false)
        .is_err()
    {
        return failed("write");
    }
    // up: what the case writes, as DATA, its shutdown as END_STREAM
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match from_play.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send_data(bytes::Bytes::new(), true);
                    return;
                }
                Ok(n) => {
                    // hold the case's writes to the stream's window, as a socket would
                    tx.reserve_capacity(n);
                    let mut left = n;
                    let mut at = 0;
                    while left > 0 {
                        match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
                            Some(Ok(c)) if c > 0 => {
                                let k = c.min(left);
                                let piece = bytes::Bytes::copy_from_slice(&buf[at..at + k]);
                                if tx.send_data(piece, false).is_err() {
                                    return;
                                }
                                at += k;
                                left -= k;
                                tx.reserve_capacity(left);
                            }
                            Some(Ok(_)) => {}
                            _ => return,
                        }
                    }
                }
            }
        }
    });
    // down: DATA into the case's reads, END_STREAM as its FIN; a reset stays unended
    tokio::spawn(async move {
        while let Some(chunk) = rx.data().await {
            let Ok(chunk) = chunk else { return };
            let _ = rx.flow_control().release_capacity(chunk.len());
            if to_play.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to_play.shutdown().await;
    });
    play(mine, status, Vec::new(), t).await
}

/// A stream as compared: its length and where it first differs from what was sent.
fn summary(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(at) => format!("{} bytes, differing from byte {at}", got.len()),
        None if got.len() == want.len() => format!("all {} bytes", want.len()),
        None if got.len() < want.len() => "a prefix".to_string(),
        None => format!(
            "{} bytes, {} more than sent",
            got.len(),
            got.len() - want.len()
        ),
    }
}

/// What a tunnel's two ends must see, for its order: (status, the client's bytes, how its
/// reading ended, the origin's bytes, how its reading ended), as [`summary`] puts them.
type View = (String, String, &'static str, String, &'static str);

/// How many bytes each side must get, for the case's order (the client's, the origin's).
/// With half-close passed on, all of them. Without, the first closer's bytes arrive whole
/// and the other side's after that close not at all; where both send at once, the full
/// lengths, of which a prefix may arrive (see [`seen`]).
fn lengths(t: &Tunnel, half_close: bool) -> (usize, usize) {
    match t.order {
        _ if half_close => (t.down_len(), t.up_len()),
        // the origin answers only after the client's FIN, which ended the tunnel
        Order::ClientFinFirst => (t.early, t.up_len()),
        // the client sends only after the origin's FIN, which ended the tunnel
        Order::OriginFinFirst => (t.down_len(), 0),
        Order::Both | Order::OriginCloses => (t.down_len(), t.up_len()),
    }
}

/// The view a case must give, its tunnel opened with `status`.
fn wanted(t: &Tunnel, status: &str, half_close: bool) -> View {
    let (down, up) = lengths(t, half_close);
    let (down, up) = match t.order {
        Order::Both if !half_close => ("a prefix".into(), "a prefix".into()),
        _ => (format!("all {down} bytes"), format!("all {up} bytes")),
    };
    let origin_end = match t.order {
        Order::OriginCloses => "limit",
        _ => "fin",
    };
    (status.into(), down, "fin", up, origin_end)
}

/// The view a case gave. Where both sides send at once and no half-close is passed on, a
/// whole stream is counted as a prefix when the other is a prefix too (the first closer's
/// arrives whole, and which side that is depends on timing), and the reading ends are not
/// compared (a close with unread bytes in flight may reset the connection rather than end
/// it).
fn seen(
    t: &Tunnel,
    half_close: bool,
    client: &ClientView,
    origin: &(Vec<u8>, &'static str),
) -> View {
    let (down_len, up_len) = lengths(t, half_close);
    let mut down = summary(&client.down, &stream(false, 0, down_len));
    let mut up = summary(&origin.0, &stream(true, 0, up_len));
    let (mut client_end, mut origin_end) = (client.ended, origin.1);
    if t.order == Order::Both && !half_close {
        let whole = |s: &str| s.starts_with("all ");
        let ok = |s: &str| whole(s) || s == "a prefix";
        if ok(&down) && ok(&up) && (whole(&down) || whole(&up)) {
            down = "a prefix".into();
            up = "a prefix".into();
        }
        if matches!(client_end, "fin" | "error") && matches!(origin_end, "fin" | "error") {
            (client_end, origin_end) = ("fin", "fin");
        }
    }
    (client.status.clone(), down, client_end, up, origin_end)
}

/// A listener's `tls:` key with a certificate for app.test from a test CA.
fn tls_block() -> String {
    let (cert, key) = quic::Pki::new("tunnel-tls").server("site", "app.test", &["app.test"], 0x700);
    format!(
        "tls: {{certificates: [{{cert: {}, key: {}}}]}}",
        quic::p(&cert),
        quic::p(&key)
    )
}

/// How a case's tunnel is opened.
#[derive(Clone, Copy)]
enum Via {
    /// A WebSocket upgrade through a listener (over TLS or not): a reverse one, or a forward
    /// one given the origin for the absolute form.
    Upgrade(SocketAddr, bool, Option<SocketAddr>),
    /// CONNECT to the origin through a forward listener (plain HTTP: forward listeners do
    /// not speak TLS), over HTTP/1.1 or HTTP/2 (h2c).
    ConnectH1(SocketAddr, SocketAddr),
    ConnectH2(SocketAddr, SocketAddr),
}

async fn open(via: Via, tag: &str, t: &Tunnel) -> ClientView {
    match via {
        Via::Upgrade(proxy, tls, target) => play_client(proxy, tls, target, tag, t).await,
        Via::ConnectH1(proxy, o) => connect_h1(proxy, o, tag, t).await,
        Via::ConnectH2(proxy, o) => connect_h2(proxy, o, tag, t).await,
    }
}

/// Play `cases` generated cases through each of `vias`; every one must give the view
/// [`wanted`] says for a tunnel opened with `status` (and `half_close` passed on or not).
async fn run_cases(
    seed: u64,
    cases: usize,
    reports: &mut mpsc::UnboundedReceiver<OriginView>,
    vias: &[(&str, Via)],
    status: &str,
    half_close: bool,
    p: &Proxy,
) {
    let mut diffs = Vec::new();
    let mut bytes = 0;
    let mut orders = [0usize; 4];
    for i in 0..cases {
        let t = tunnel(seed, i);
        orders[t.order as usize] += 1;
        bytes += t.up_len() + t.down_len();
        let name = format!("case {i} {t:?}");
        for (k, (label, via)) in vias.iter().enumerate() {
            let tag = format!("{i}-{k}");
            let client = open(*via, &tag, &t).await;
            // the origin's report of this tunnel (one left over from an earlier case that
            // timed out is skipped)
            let origin = loop {
                match tokio::time::timeout(PATIENCE, reports.recv()).await {
                    Ok(Some(v)) if v.0 == tag => break (v.1, v.2),
                    Ok(Some(_)) => continue,
                    _ => break (Vec::new(), "no tunnel"),
                }
            };
            let got = seen(&t, half_close, &client, &origin);
            let want = wanted(&t, status, half_close);
            if got != want {
                diffs.push(format!(
                    "{name} through {label}: (status, client got, client's end, origin got, origin's end)\n  want: {want:?}\n  got:  {got:?}"
                ));
            }
        }
    }
    assert!(
        orders.iter().all(|&n| n >= cases / 8),
        "each order in at least an eighth of the cases: {orders:?}"
    );
    assert!(bytes > cases * 100_000, "the cases carried {bytes} bytes");
    scripted::assert_alike(&diffs, cases, &p.log());
}

/// Generated WebSocket tunnels end at the first close, with what the first closer sent
/// delivered whole, alike through the lean engine, the general engine and the forward proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_tunnels_end_at_the_first_close_alike_on_every_listener() {
    const SEED: u64 = 0x7e55_e1a7_0000_0001;
    let (o, mut reports) = origin(SEED).await;
    let cfg = format!(
        "listeners:
  - {{name: fast, address: 127.0.0.1:{{{{port}}}}, protocol: http}}
  - {{name: general, address: 127.0.0.1:{{{{port1}}}}, protocol: http, fast_path: false}}
  - name: fwd
    address: 127.0.0.1:{{{{port2}}}}
    protocol: http
    forward_proxy: {{allow_private_destinations: true, access: [{{action: allow}}]}}
  - {{name: fast_tls, address: 127.0.0.1:{{{{port3}}}}, protocol: https, {tls}}}
upstreams:
  - {{name: app, backends: [{{address: '{o}'}}], retries: 0}}
routes:
  - {{listener: fast, host: app.test, upstream: app}}
  - {{listener: general, host: app.test, upstream: app}}
  - {{listener: fast_tls, host: app.test, upstream: app}}
",
        tls = tls_block()
    );
    let p = Proxy::start(&cfg);
    let vias = [
        ("lean", Via::Upgrade(p.addr_of(0), false, None)),
        ("general", Via::Upgrade(p.addr_of(1), false, None)),
        ("forward", Via::Upgrade(p.addr_of(2), false, Some(o))),
        ("lean over TLS", Via::Upgrade(p.addr_of(3), true, None)),
    ];
    run_cases(SEED, 80, &mut reports, &vias, "101", false, &p).await;
}

/// Generated CONNECT tunnels, over HTTP/1.1 and over HTTP/2, carry every byte both ways in
/// every order of closing: a FIN (or END_STREAM) is passed on and the other direction runs
/// until it ends too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_connect_tunnels_pass_half_closes_on_over_http1_and_http2() {
    const SEED: u64 = 0xc0_22ec_7000_0001;
    let (o, mut reports) = origin(SEED).await;
    let p = Proxy::start(&crate::support::forward_h2c(o.port()));
    let vias = [
        ("CONNECT over HTTP/1.1", Via::ConnectH1(p.addr, o)),
        ("CONNECT over HTTP/2", Via::ConnectH2(p.addr, o)),
    ];
    run_cases(SEED, 80, &mut reports, &vias, "200", true, &p).await;
}
