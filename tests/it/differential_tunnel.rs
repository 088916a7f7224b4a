//! WebSocket tunnels through every listener kind that relays them: the lean engine, the
//! general engine (`fast_path: false`) and the forward proxy (absolute-form request). Each
//! generated case opens a tunnel to an origin that answers 101 (sometimes with frames right
//! behind it), then both sides send bytes in pieces of generated sizes and end in one of
//! four orders: the client's FIN first (the origin answers after it), the origin's FIN first
//! (the client sends after it), both at once, or the origin closing outright once it has read
//! what the client sent. A tunnel ends at the first side's close, once what that side sent
//! is delivered (`policy::UPGRADE_HALF_CLOSE`), alike on all three listeners: what the first
//! closer sent arrives whole and in order, what the other side sends after it does not, and
//! where both send at once each side gets a prefix of the other's bytes. Bytes depend on
//! their position and direction, so a piece lost, repeated, moved or crossed over shows.

use crate::differential_gen::Gen;
use crate::support::scripted;
use crate::support::Proxy;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// What the origin saw of one tunnel: the request's tag (`N-L`: case N through listener
/// L), the bytes and how its reading ended.
type OriginView = (String, Vec<u8>, &'static str);

/// The tunnel origin: answers a request for `/t/N-L` with a 101 and plays case N; reports
/// what it read.
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
    let end = loop {
        if let Some(at) = scripted::find(&got, b"\r\n\r\n") {
            break at + 4;
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
    let tag = head.split("/t/").nth(1)?.split(' ').next()?.to_string();
    let t = tunnel(seed, tag.split('-').next()?.parse().ok()?);
    let mut read = got[end..].to_vec();
    let mut first =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_vec();
    first.extend_from_slice(&stream(false, 0, t.early));
    s.write_all(&first).await.ok()?;
    let from = t.early;
    let ended = match t.order {
        Order::ClientFinFirst => {
            let e = drain(&mut s, &mut read, usize::MAX).await;
            send(&mut s, false, from, &t.down).await;
            e
        }
        Order::OriginFinFirst => {
            send(&mut s, false, from, &t.down).await;
            let _ = s.shutdown().await;
            drain(&mut s, &mut read, usize::MAX).await
        }
        Order::Both => {
            let (mut r, mut w) = s.split();
            let (e, _) = tokio::join!(drain(&mut r, &mut read, usize::MAX), async {
                send(&mut w, false, from, &t.down).await;
                let _ = w.shutdown().await;
            });
            e
        }
        Order::OriginCloses => {
            let e = drain(&mut s, &mut read, t.up_len()).await;
            send(&mut s, false, from, &t.down).await;
            e
        }
    };
    Some((tag, read, ended))
}

/// What the client saw: the status line, the bytes after the response head, and how its
/// reading ended.
#[derive(Debug, PartialEq)]
struct ClientView {
    status: String,
    down: Vec<u8>,
    ended: &'static str,
}

/// `target`: the origin's address for the forward proxy (absolute form), or none.
async fn play_client(
    proxy: SocketAddr,
    target: Option<SocketAddr>,
    tag: &str,
    t: &Tunnel,
) -> ClientView {
    let fail = |why: &'static str| ClientView {
        status: String::new(),
        down: Vec::new(),
        ended: why,
    };
    let Ok(mut s) = TcpStream::connect(proxy).await else {
        return fail("connect");
    };
    let (path, host) = match target {
        Some(o) => (format!("http://{o}/t/{tag}"), o.to_string()),
        None => (format!("/t/{tag}"), "app.test".to_string()),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return fail("write");
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = scripted::find(&got, b"\r\n\r\n") {
            break at + 4;
        }
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return fail("no head"),
        }
    };
    let status = String::from_utf8_lossy(&got[..end])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let mut down = got[end..].to_vec();
    if !status.starts_with("HTTP/1.1 101") {
        return ClientView {
            status,
            down,
            ended: "refused",
        };
    }
    let ended = match t.order {
        Order::ClientFinFirst => {
            send(&mut s, true, 0, &t.up).await;
            let _ = s.shutdown().await;
            drain(&mut s, &mut down, usize::MAX).await
        }
        Order::OriginFinFirst => {
            let e = drain(&mut s, &mut down, usize::MAX).await;
            send(&mut s, true, 0, &t.up).await;
            let _ = s.shutdown().await;
            e
        }
        Order::Both => {
            let (mut r, mut w) = s.split();
            let (e, _) = tokio::join!(drain(&mut r, &mut down, usize::MAX), async {
                send(&mut w, true, 0, &t.up).await;
                let _ = w.shutdown().await;
            });
            e
        }
        Order::OriginCloses => {
            send(&mut s, true, 0, &t.up).await;
            drain(&mut s, &mut down, usize::MAX).await
        }
    };
    ClientView {
        status,
        down,
        ended,
    }
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

/// How many bytes each side must get, for the case's order (the client's, the origin's):
/// the first closer's bytes arrive whole, the other side's after that close not at all.
/// Where both send at once, the full lengths, of which a prefix may arrive (see [`seen`]).
fn lengths(t: &Tunnel) -> (usize, usize) {
    match t.order {
        // the origin answers only after the client's FIN, which ended the tunnel
        Order::ClientFinFirst => (t.early, t.up_len()),
        // the client sends only after the origin's FIN, which ended the tunnel
        Order::OriginFinFirst => (t.down_len(), 0),
        Order::Both | Order::OriginCloses => (t.down_len(), t.up_len()),
    }
}

/// The view a case must give.
fn wanted(t: &Tunnel) -> View {
    let (down, up) = lengths(t);
    let (down, up) = match t.order {
        Order::Both => ("a prefix".into(), "a prefix".into()),
        _ => (format!("all {down} bytes"), format!("all {up} bytes")),
    };
    let origin_end = match t.order {
        Order::OriginCloses => "limit",
        _ => "fin",
    };
    (
        "HTTP/1.1 101 Switching Protocols".into(),
        down,
        "fin",
        up,
        origin_end,
    )
}

/// The view a case gave. Where both sides send at once, a whole stream is counted as a
/// prefix when the other is a prefix too (the first closer's arrives whole, and which side
/// that is depends on timing), and the reading ends are not compared (a close with unread
/// bytes in flight may reset the connection rather than end it).
fn seen(t: &Tunnel, client: &ClientView, origin: &(Vec<u8>, &'static str)) -> View {
    let (down_len, up_len) = lengths(t);
    let mut down = summary(&client.down, &stream(false, 0, down_len));
    let mut up = summary(&origin.0, &stream(true, 0, up_len));
    let (mut client_end, mut origin_end) = (client.ended, origin.1);
    if t.order == Order::Both {
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
upstreams:
  - {{name: app, backends: [{{address: '{o}'}}], retries: 0}}
routes:
  - {{listener: fast, host: app.test, upstream: app}}
  - {{listener: general, host: app.test, upstream: app}}
"
    );
    let p = Proxy::start(&cfg);
    let listeners = [
        ("lean", p.addr_of(0), None),
        ("general", p.addr_of(1), None),
        ("forward", p.addr_of(2), Some(o)),
    ];
    let mut diffs = Vec::new();
    const CASES: usize = 80;
    let mut bytes = 0;
    let mut orders = [0usize; 4];
    for i in 0..CASES {
        let t = tunnel(SEED, i);
        orders[t.order as usize] += 1;
        bytes += t.up_len() + t.down_len();
        let name = format!("case {i} {t:?}");
        for (k, (label, addr, target)) in listeners.iter().enumerate() {
            let tag = format!("{i}-{k}");
            let client = play_client(*addr, *target, &tag, &t).await;
            // the origin's report of this tunnel (one left over from an earlier case that
            // timed out is skipped)
            let origin = loop {
                match tokio::time::timeout(PATIENCE, reports.recv()).await {
                    Ok(Some(v)) if v.0 == tag => break (v.1, v.2),
                    Ok(Some(_)) => continue,
                    _ => break (Vec::new(), "no tunnel"),
                }
            };
            let got = seen(&t, &client, &origin);
            let want = wanted(&t);
            if got != want {
                diffs.push(format!(
                    "{name} through {label}: (status, client got, client's end, origin got, origin's end)\n  want: {want:?}\n  got:  {got:?}"
                ));
            }
        }
    }
    assert!(
        orders.iter().all(|&n| n >= CASES / 8),
        "each order in at least an eighth of the cases: {orders:?}"
    );
    assert!(bytes > CASES * 100_000, "the cases carried {bytes} bytes");
    scripted::assert_alike(&diffs, CASES, &p.log());
}
