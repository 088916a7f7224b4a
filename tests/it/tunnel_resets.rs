//! How a tunnel ends when one side is cut off. What a client sent before its connection was
//! reset still reaches the origin; and a relay that fails passes a reset on, never a FIN
//! that would make a cut-off stream look finished (RFC 9113 §8.5 asks this of an HTTP/2
//! CONNECT proxy; HAProxy passes aborts on the same way).

use crate::support::forward_h2c;
use crate::support::h2raw::{self, frame, Outcome, END_HEADERS, END_STREAM, GOAWAY, HEADERS};
use crate::support::proxy::Proxy;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const DATA: u8 = 0;
const RST_STREAM: u8 = 3;
const PING: u8 = 6;
const WINDOW_UPDATE: u8 = 8;
const PATIENCE: Duration = Duration::from_secs(10);

/// How a peer's reading ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Fin,
    Reset,
    Stalled,
}

/// Read to the end; the bytes and how the reading ended.
async fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, End) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(0)) => return (got, End::Fin),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, End::Reset)
            }
            Ok(Err(e)) => panic!("the read failed otherwise than by a reset: {e}"),
            Err(_) => return (got, End::Stalled),
        }
    }
}

/// What an origin does after sending its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Read to the end.
    Read,
    /// Reset the connection. (It waits for a byte before it sends: so that the relay is
    /// under way, rather than the reset taken for a failed connect.)
    Reset,
}

/// An origin. On each connection it sends `send` first, then does as `then` says, and
/// reports what it read and how the reading ended; a connection that brought nothing and
/// just closed (the test harness's readiness probe through an L4 listener) is not reported.
async fn origin(
    send: Vec<u8>,
    then: Then,
) -> (SocketAddr, mpsc::UnboundedReceiver<(Vec<u8>, End)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (send, tx) = (send.clone(), tx.clone());
            tokio::spawn(async move {
                if then == Then::Reset && !matches!(s.read(&mut [0u8; 1]).await, Ok(1)) {
                    return;
                }
                if s.write_all(&send).await.is_err() {
                    return;
                }
                match then {
                    Then::Reset => return set_reset(&s),
                    Then::Read => {}
                }
                let (got, end) = read_to_end(&mut s).await;
                if !got.is_empty() || end != End::Fin {
                    let _ = tx.send((got, end));
                }
            });
        }
    });
    (addr, rx)
}

/// Make the socket's close a reset.
#[allow(deprecated)]
fn set_reset(s: &TcpStream) {
    s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
}

async fn report(mut rx: mpsc::UnboundedReceiver<(Vec<u8>, End)>) -> (Vec<u8>, End) {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("the origin reports within the patience")
        .expect("the origin is still there")
}

/// Send `body` on the client's connection `c`, then reset it: how the origin's reading
/// ended, once it is checked to have got all of `body` first.
async fn send_then_reset(
    mut c: TcpStream,
    body: &[u8],
    got: mpsc::UnboundedReceiver<(Vec<u8>, End)>,
) -> End {
    c.write_all(body).await.expect("send");
    set_reset(&c);
    drop(c);
    let (bytes, end) = report(got).await;
    assert!(
        bytes == body,
        "the origin got what was sent before the reset"
    );
    end
}

/// Bytes that differ along their length, so a reordered or shifted stream shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A CONNECT to `o` on stream 1 of a raw HTTP/2 connection (`first`: frames to send before
/// it), answered with its 200.
async fn connect_h2(proxy: SocketAddr, o: SocketAddr, first: &[u8]) -> TcpStream {
    let mut s = h2raw::connect(proxy).await;
    s.write_all(first).await.expect("send the first frames");
    let authority = o.to_string();
    let block = h2raw::block(&[
        (b":method", b"CONNECT"),
        (b":authority", authority.as_bytes()),
    ]);
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &block))
        .await
        .expect("send the CONNECT");
    assert_eq!(
        h2raw::outcome(&mut s, 1, PATIENCE).await,
        Outcome::Status(200),
        "the CONNECT is answered"
    );
    s
}

/// An origin that sends without end while it reads to the end. `stalled` is told once its
/// writes have made no progress for 200 ms (the proxy stopped taking them in); it then
/// reports what it read and how the reading ended.
async fn flooding_origin() -> (
    SocketAddr,
    oneshot::Receiver<()>,
    oneshot::Receiver<(Vec<u8>, End)>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (stalled_tx, stalled) = oneshot::channel();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((s, _)) = l.accept().await else {
            return;
        };
        let (mut r, mut w) = s.into_split();
        tokio::spawn(async move {
            let chunk = pattern(64 << 10);
            let mut stalled_tx = Some(stalled_tx);
            loop {
                let write = w.write_all(&chunk);
                match tokio::time::timeout(Duration::from_millis(200), write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        if let Some(t) = stalled_tx.take() {
                            let _ = t.send(());
                        }
                    }
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let end = loop {
            match tokio::time::timeout(PATIENCE, r.read(&mut buf)).await {
                Ok(Ok(0)) => break End::Fin,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
                Ok(Err(e)) => panic!("the read failed otherwise than by a reset: {e}"),
                Err(_) => break End::Stalled,
            }
        };
        let _ = tx.send((got, end));
    });
    (addr, stalled, rx)
}

/// An HTTP/2 client that does not read (windows opened wide, so the proxy's writes to it
/// fill the connection and wait) sends a PING and the last frames of its upload, and closes
/// at once with its connection reset (as its kernel does when frames of ours are unread in
/// it). Answering the PING makes the proxy write before it reads on, and that write finds
/// the reset: the frames after the PING, already in the proxy's socket, must still be read
/// and the whole upload reach the origin. The client left the tunnel half-open, so what
/// follows is a FIN (the relay took the END_STREAM before the connection's end reached the
/// stream) or a reset (h2 reports the stream cut off); either way nothing is left hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_reset_right_after_its_upload_still_gets_it_through_whole() {
    let (o, stalled, got) = flooding_origin().await;
    let p = Proxy::start(&forward_h2c(o.port()));
    // SETTINGS_INITIAL_WINDOW_SIZE and the connection's window, both at their largest
    let mut wide = frame(h2raw::SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]);
    wide.extend(frame(
        WINDOW_UPDATE,
        0,
        0,
        &(0x7fff_ffffu32 - 65535).to_be_bytes(),
    ));
    let mut s = connect_h2(p.addr, o, &wide).await;
    tokio::time::timeout(PATIENCE, stalled)
        .await
        .expect("the proxy's writes to the client fill the connection")
        .expect("the origin is still there");
    // three frames of the largest default size: within the proxy's 65,535-byte windows
    let body = pattern(3 * 16384);
    let mut flight = frame(PING, 0, 0, &[7; 8]);
    flight.extend(frame(DATA, 0, 1, &body[..16384]));
    flight.extend(frame(DATA, 0, 1, &body[16384..32768]));
    flight.extend(frame(DATA, END_STREAM, 1, &body[32768..]));
    flight.extend(frame(GOAWAY, 0, 0, &[0; 8]));
    set_reset(&s);
    s.write_all(&flight).await.expect("send the upload");
    drop(s);
    let (bytes, end) = tokio::time::timeout(PATIENCE + PATIENCE, got)
        .await
        .expect("the origin reports")
        .expect("the origin got a connection");
    assert_eq!(
        bytes.len(),
        body.len(),
        "the origin got the whole upload (then {end:?})"
    );
    assert!(bytes == body, "the upload arrived unchanged");
    assert!(
        matches!(end, End::Fin | End::Reset),
        "the tunnel ended at the origin ({end:?})"
    );
}

/// A client that cancels its CONNECT stream mid-upload (RST_STREAM) cuts the tunnel off: the
/// origin gets what was sent, then a reset, not a FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connect_stream_reset_reaches_the_origin_as_a_reset() {
    let (o, got) = origin(Vec::new(), Then::Read).await;
    let p = Proxy::start(&forward_h2c(o.port()));
    let mut s = connect_h2(p.addr, o, &[]).await;
    let body = pattern(1000);
    let mut flight = frame(DATA, 0, 1, &body);
    // CANCEL
    flight.extend(frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    s.write_all(&flight).await.expect("send");
    let (bytes, end) = report(got).await;
    assert!(
        bytes == body,
        "the origin got what was sent before the reset"
    );
    assert_eq!(end, End::Reset, "the cut-off tunnel ends with a reset");
    drop(s);
}

/// The same over HTTP/1.1 CONNECT and an L4 listener: a client that resets its connection
/// mid-upload is passed on as a reset. On L4, an origin that resets is passed on to the client
/// as a reset too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_reaches_the_origin_as_a_reset_over_http1_connect_and_l4() {
    let body = pattern(1000);
    // HTTP/1.1 CONNECT
    let (o, got) = origin(Vec::new(), Then::Read).await;
    // (the listener speaks h2c too; this client speaks HTTP/1.1)
    let p = Proxy::start(&forward_h2c(o.port()));
    let mut c = TcpStream::connect(p.addr).await.expect("connect");
    c.write_all(format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\n\r\n").as_bytes())
        .await
        .expect("send the CONNECT");
    let mut head = [0u8; 12];
    c.read_exact(&mut head).await.expect("the answer");
    assert_eq!(&head, b"HTTP/1.1 200", "the CONNECT is answered");
    let end = send_then_reset(c, &body, got).await;
    assert_eq!(
        end,
        End::Reset,
        "HTTP/1.1 CONNECT: the client's reset is passed on"
    );

    // L4, the client resets
    let (o, got) = origin(Vec::new(), Then::Read).await;
    let l4 = |o: SocketAddr| {
        format!(
            "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u}}\nupstreams:\n  - name: u\n    backends: [{{address: '{o}'}}]\n    retries: 0\n"
        )
    };
    let p = Proxy::start(&l4(o));
    let c = TcpStream::connect(p.addr).await.expect("connect");
    let end = send_then_reset(c, &body, got).await;
    assert_eq!(end, End::Reset, "L4: the client's reset is passed on");

    // L4, the origin resets
    let (o, _) = origin(body.clone(), Then::Reset).await;
    let p = Proxy::start(&l4(o));
    let mut c = TcpStream::connect(p.addr).await.expect("connect");
    c.write_all(b"x").await.expect("send");
    let (bytes, end) = read_to_end(&mut c).await;
    assert!(
        bytes.len() <= body.len() && bytes == body[..bytes.len()],
        "the client got a prefix of what the origin sent"
    );
    assert_eq!(end, End::Reset, "L4: the origin's reset is passed on");
}
