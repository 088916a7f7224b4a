//! One policy over HTTP/3 too: requests made by `differential_h2`'s generator, each on a new
//! QUIC connection to an https listener with `http3: true` on the lean engine and to one with
//! `fast_path: false` (the TCP side's general engine, through the HTTP/3 session adapter),
//! must give the client and the scripted origin the same.

use crate::differential_gen::Gen;
use crate::differential_h2::{answer, generated, Req};
use crate::support::quic::{self, Pki};
use crate::support::scripted::{self, Answer, Origin};
use bytes::{Buf, Bytes};
use std::net::SocketAddr;
use std::time::Duration;

/// What the client got: the final answer, or where the exchange failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Got {
    Answer(Answer),
    Failed(String),
}

/// One request on a new connection (SNI app.test).
pub(crate) async fn exchange(e: &quinn::Endpoint, addr: SocketAddr, r: &Req) -> Got {
    let (conn, mut s) = quic::connect(e, addr, "app.test").await;
    let mut b = http::Request::builder()
        .method(r.method)
        .uri(format!("https://{}{}", r.authority, r.path));
    // the `h3` client builds `:authority` from the URI and refuses a `host` field beside it
    for (k, v) in r.fields.iter().filter(|(k, _)| *k != "host") {
        b = b.header(*k, v.as_str());
    }
    let got = async {
        let req = b.body(()).map_err(|e| format!("build: {e}"))?;
        let mut st = s
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        for d in &r.data {
            // an answer before the body is all sent ends the stream: not a difference
            if st.send_data(Bytes::copy_from_slice(d)).await.is_err() {
                break;
            }
        }
        let _ = st.finish().await;
        // interim responses (a 103) come first; the answer is the final one
        let mut resp = st
            .recv_response()
            .await
            .map_err(|e| format!("response: {e}"))?;
        while resp.status().is_informational() {
            resp = st
                .recv_response()
                .await
                .map_err(|e| format!("response: {e}"))?;
        }
        let mut body = Vec::new();
        while let Some(mut c) = st.recv_data().await.map_err(|e| format!("body: {e}"))? {
            while c.has_remaining() {
                let n = c.chunk().len();
                body.extend_from_slice(c.chunk());
                c.advance(n);
            }
        }
        // each listener announces its own port
        let mut a = answer(resp.status().as_u16(), resp.headers(), body);
        for (k, v) in &mut a.fields {
            if k == "alt-svc" && v.starts_with("h3=\":") {
                *v = format!(
                    "h3=\":<port>{}",
                    v.trim_start_matches("h3=\":")
                        .trim_start_matches(|c: char| c.is_ascii_digit())
                );
            }
        }
        Ok::<_, String>(a)
    };
    let out = match tokio::time::timeout(Duration::from_secs(5), got).await {
        Ok(Ok(a)) => Got::Answer(a),
        Ok(Err(e)) => Got::Failed(e),
        Err(_) => Got::Failed("timed out".into()),
    };
    conn.close(0u32.into(), b"done");
    out
}

/// The scripted config's listener pairs as https listeners with `http3: true`: `{{port}}` on
/// the lean engine, `{{port1}}` with `fast_path: false`.
pub(crate) fn both_engines(tag: &str, origin: &Origin) -> (Pki, crate::support::Proxy) {
    both_engines_with(tag, origin, "")
}

/// [`both_engines`] with `extra` added to the keys of the two listeners (`, limits: ...`).
fn both_engines_with(tag: &str, origin: &Origin, extra: &str) -> (Pki, crate::support::Proxy) {
    let pki = Pki::new(tag);
    let (cert, key) = pki.server(
        "site",
        "app.test",
        &["app.test", "*.test", "sticky.test"],
        0x500,
    );
    let listen = format!(
        "protocol: https, http3: true, tls: {{certificates: [{{cert: {}, key: {}}}]}}",
        quic::p(&cert),
        quic::p(&key)
    );
    let p = quic::start(&pki, &scripted::config_with(origin.addr, &listen, extra));
    (pki, p)
}

/// What the generated test found over HTTP/3, one check each, on both engines: a response
/// carries a `Date` (the lean engine sent none, the backend's included, and none on its own
/// answers), the listener's `Alt-Svc` replaces the backend's (the lean engine passed the
/// backend's on), and a request body without a Content-Length reaches the backend with its
/// length (the general engine sent it chunked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_answers_have_a_date_and_the_listeners_alt_svc_and_bodies_their_length() {
    let origin = Origin::start().await;
    let (pki, p) = both_engines("h3-fields", &origin);
    let e = quic::endpoint(&pki);
    let backend = b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\nAlt-Svc: h2=\":9\"\r\nContent-Length: 2\r\n\r\nok";
    let hex: String = backend.iter().map(|b| format!("{b:02x}")).collect();
    for (engine, i) in [("lean", 0), ("general", 1)] {
        let addr = p.addr_of(i);
        let own_alt_svc = format!("h3=\":{}\"; ma=86400", addr.port());
        let (conn, mut s) = quic::connect(&e, addr, "app.test").await;
        let raw = [("x-raw-response", hex.as_str())];
        let got = quic::request(&mut s, "GET", "https://app.test/raw", &raw, None)
            .await
            .unwrap_or_else(|err| panic!("{engine}: {err}"));
        assert_eq!(got.status, 200, "{engine}");
        let h = |n: &str| {
            got.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            h("date").as_deref(),
            Some("Tue, 01 Dec 2026 10:00:00 GMT"),
            "{engine}"
        );
        assert_eq!(h("alt-svc"), Some(own_alt_svc), "{engine}");

        let got = quic::request(&mut s, "GET", "https://nope.test/", &[], None)
            .await
            .unwrap_or_else(|err| panic!("{engine}: {err}"));
        assert_eq!(got.status, 404, "{engine}");
        assert!(
            got.headers.contains_key("date"),
            "{engine}: own answer {:?}",
            got.headers
        );

        origin.take();
        // the `h3` client sends no Content-Length of its own
        let got = quic::request(
            &mut s,
            "POST",
            "https://app.test/echo",
            &[],
            Some(b"hello".to_vec()),
        )
        .await
        .unwrap_or_else(|err| panic!("{engine}: {err}"));
        assert_eq!(got.status, 200, "{engine}");
        assert_eq!(got.body, b"5 bytes", "{engine}");
        let seen = origin.take();
        let fields = &seen
            .first()
            .unwrap_or_else(|| panic!("{engine}: no request"))
            .fields;
        let f = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(f("content-length"), Some("5"), "{engine}: {fields:?}");
        assert_eq!(f("transfer-encoding"), None, "{engine}: {fields:?}");
        conn.close(0u32.into(), b"done");
    }
}

/// A request body without a Content-Length that arrives slowly but steadily (a piece every
/// 300 ms, 2.4 s in all, with `client_timeout: 1s`) reaches the backend whole, with its
/// length, on both engines. The timeout is the gap between reads, as nginx's
/// `client_body_timeout` is: the lean engine used to bound the whole read-ahead by it (a 408
/// for any upload longer than the timeout), and the general engine, once it read ahead
/// too, dropped what it had read when the bound ran out and sent the rest as the body.
/// The backend (`read_timeout: 1s`) answers 300 ms after the body is in: the time spent
/// reading the body ahead is not the backend's (the lean engine counted it and gave a fresh
/// backend connection 1 ms, a 504 whenever the backend was not that quick).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_http3_body_without_a_length_arrives_whole() {
    let origin = Origin::start().await;
    let (pki, p) = both_engines_with("h3-slow", &origin, ", limits: {client_timeout: 1s}");
    let e = quic::endpoint(&pki);
    for (engine, i) in [("lean", 0), ("general", 1)] {
        let (conn, mut s) = quic::connect(&e, p.addr_of(i), "app.test").await;
        let req = http::Request::builder()
            .method("POST")
            .uri("https://app.test/echo-late")
            .body(())
            .expect("request");
        let mut st = s.send_request(req).await.expect("send");
        for piece in 0..8u8 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            st.send_data(Bytes::from(vec![b'a' + piece; 1000]))
                .await
                .unwrap_or_else(|err| panic!("{engine}: piece {piece}: {err}"));
        }
        st.finish().await.expect("finish");
        let resp = st.recv_response().await.expect("response");
        assert_eq!(resp.status(), 200, "{engine}");
        let seen = origin.take();
        let r = seen
            .first()
            .unwrap_or_else(|| panic!("{engine}: nothing reached the origin"));
        let expected: Vec<u8> = (0..8u8).flat_map(|p| vec![b'a' + p; 1000]).collect();
        assert_eq!(r.body.len(), expected.len(), "{engine}");
        assert!(r.body == expected, "{engine}: the body arrived changed");
        let length = r.fields.iter().find(|(k, _)| k == "content-length");
        assert_eq!(length.map(|(_, v)| v.as_str()), Some("8000"), "{engine}");
        conn.close(0u32.into(), b"done");
    }
}

/// `Max-Forwards` over HTTP/3, on both engines (the lean one hands the request over): a count
/// is passed on less one, a spent one is answered by the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_max_forwards_is_counted_down_and_a_spent_count_answered() {
    let origin = Origin::start().await;
    let (pki, p) = both_engines("h3-maxfwd", &origin);
    let e = quic::endpoint(&pki);
    for (engine, i) in [("lean", 0), ("general", 1)] {
        let (conn, mut s) = quic::connect(&e, p.addr_of(i), "app.test").await;
        let url = "https://app.test/";
        let got = quic::request(&mut s, "OPTIONS", url, &[("max-forwards", "0")], None)
            .await
            .unwrap_or_else(|err| panic!("{engine}: {err}"));
        assert_eq!(got.status, 200, "{engine}");
        assert!(
            origin.take().is_empty(),
            "{engine}: a spent count was forwarded"
        );
        // a route that takes TRACE (the others answer it 405)
        let url = "https://methods.test/";
        let got = quic::request(&mut s, "TRACE", url, &[("max-forwards", "2")], None)
            .await
            .unwrap_or_else(|err| panic!("{engine}: {err}"));
        assert_eq!(got.status, 200, "{engine}");
        let seen = origin.take();
        let r = seen
            .first()
            .unwrap_or_else(|| panic!("{engine}: not forwarded"));
        let f = r.fields.iter().find(|(k, _)| k == "max-forwards");
        assert_eq!(f.map(|(_, v)| v.as_str()), Some("1"), "{engine}");
        conn.close(0u32.into(), b"done");
    }
}

/// Requests made by `differential_h2::generated` from a fixed seed, over HTTP/3 to both
/// engines, must give the client and the origin the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_http3_requests_are_answered_alike() {
    let origin = Origin::start().await;
    let (pki, p) = both_engines("diff-h3", &origin);
    let (fast, general) = (p.addr_of(0), p.addr_of(1));
    let e = quic::endpoint(&pki);
    let mut g = Gen(0x0068_3367_656e_7331);
    let mut diffs = Vec::new();
    let mut answered = 0;
    const CASES: usize = 300;
    for i in 0..CASES {
        let r = generated(&mut g);
        let a = exchange(&e, fast, &r).await;
        let seen_a = origin.take();
        let b = exchange(&e, general, &r).await;
        let seen_b = origin.take();
        answered += usize::from(matches!(a, Got::Answer(_)));
        let name = format!("case {i} {}", r.label());
        scripted::differ(&mut diffs, &name, "client saw", &a, &b);
        scripted::differ_seen(&mut diffs, &name, &seen_a, &seen_b);
    }
    scripted::assert_answered_and_alike(&diffs, answered, CASES, "requests", &p.log());
}

/// One backend response for the compression test: a status, a media type, maybe an encoding
/// of its own, `no-transform`, a validator, a Vary, and a text body around the 256-byte
/// `min_size`.
fn compressible(g: &mut Gen) -> Vec<u8> {
    let status = g.pick(&["200 OK", "200 OK", "200 OK", "206 Partial", "404 Not Found"]);
    let mut out = format!("HTTP/1.1 {status}\r\n");
    let ct = g.pick(&[
        "text/plain",
        "text/html; charset=utf-8",
        "application/json",
        "image/png",
        "text/css",
        "",
    ]);
    if !ct.is_empty() {
        out.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    for (name, values, odds) in [
        ("Content-Encoding", &["gzip", "identity", "br"][..], 1),
        (
            "Cache-Control",
            &["no-transform", "max-age=60", "private"][..],
            2,
        ),
        ("ETag", &["\"v1\"", "W/\"v1\""][..], 3),
        ("Vary", &["Accept", "Cookie", "Accept-Encoding"][..], 2),
    ] {
        if g.chance(odds) {
            out.push_str(&format!("{name}: {}\r\n", g.pick(values)));
        }
    }
    let n = *[0usize, 10, 255, 256, 257, 1000, 4000]
        .get((g.next() % 7) as usize)
        .unwrap_or(&0);
    let body: String = (0..n).map(|i| (b'a' + (i % 7) as u8) as char).collect();
    out.push_str(&crate::differential_gen::framed(&body, g.chance(2)));
    out.into_bytes()
}

/// A compressing route over HTTP/3: the lean engine runs the route's compression step itself
/// (its HTTP/1 and HTTP/2 requests on such a route go to the general engine). Generated
/// responses, each asked for with one of several Accept-Encodings (or a Range, or as HEAD),
/// must reach the client the same from both engines: status, fields, and the body once
/// decoded (the compressed bytes may be cut differently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_http3_responses_are_compressed_alike() {
    let origin = Origin::start().await;
    let (pki, p) = both_engines("diff-h3-gz", &origin);
    let e = quic::endpoint(&pki);
    let mut g = Gen(0x0067_7a67_7a67_7a01);
    let mut diffs = Vec::new();
    let mut compressed = 0;
    const CASES: usize = 200;
    for i in 0..CASES {
        let resp = compressible(&mut g);
        let hex: String = resp.iter().map(|b| format!("{b:02x}")).collect();
        let method = if g.chance(1) { "HEAD" } else { "GET" };
        let ae = g.pick(&[
            "",
            "gzip",
            "br",
            "zstd",
            "gzip, br",
            "br;q=0, gzip",
            "*",
            "identity",
            "gzip;q=0",
            "x-unknown",
        ]);
        let mut fields = vec![("x-raw-response", hex)];
        if !ae.is_empty() {
            fields.push(("accept-encoding", ae.to_string()));
        }
        if g.chance(1) {
            fields.push(("range", "bytes=0-9".to_string()));
        }
        let r = Req {
            method,
            authority: "gz.test",
            path: "/raw",
            fields,
            data: Vec::new(),
        };
        let mut got = Vec::new();
        for l in 0..2 {
            let mut a = exchange(&e, p.addr_of(l), &r).await;
            if let Got::Answer(a) = &mut a {
                let coding = a
                    .fields
                    .iter()
                    .find(|(k, _)| k == "content-encoding")
                    .map(|(_, v)| v.clone());
                // the proxy's codings are decoded; the origin's own are left as they came
                let origin_coded = String::from_utf8_lossy(&resp).contains("Content-Encoding");
                if let Some(c) = coding.filter(|c| !origin_coded && c != "identity") {
                    compressed += usize::from(l == 0);
                    if !a.body.is_empty() {
                        a.body = crate::compression::decode(&c, &a.body);
                    }
                }
            }
            got.push(a);
            origin.take();
        }
        let name = format!(
            "case {i} {method} accept-encoding {ae:?} {:?}",
            String::from_utf8_lossy(&resp)
        );
        scripted::differ(&mut diffs, &name, "client saw", &got[0], &got[1]);
    }
    assert!(
        compressed > CASES / 10,
        "only {compressed} of {CASES} were compressed"
    );
    scripted::assert_alike(&diffs, CASES, &p.log());
}
