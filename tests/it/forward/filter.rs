//! Content filtering: body patterns across chunks, inside gzip and in a held head, and
//! content-type and URL blocks.

use super::{absolute, chunk, curl, fwd, proxy_url, raw_exchange, scripted, FILTER, OPEN};
use crate::support::{OriginBuilder, Proxy};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_pattern_split_across_chunks_cuts_the_response() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    let gap = Duration::from_millis(300);
    let (bad, _) = scripted(vec![
        (Duration::ZERO, head.clone()),
        (Duration::ZERO, chunk(b"hello forbid")),
        (gap, chunk(b"den-word and the rest")),
        (Duration::ZERO, b"0\r\n\r\n".to_vec()),
    ])
    .await;
    let (good, _) = scripted(vec![
        (Duration::ZERO, head),
        (Duration::ZERO, chunk(b"hello forbid")),
        (gap, chunk(b"dance and the rest")),
        (Duration::ZERO, b"0\r\n\r\n".to_vec()),
    ])
    .await;
    let p = Proxy::start(&fwd(&format!("{OPEN}\n{FILTER}")));

    // control: the same shape without the pattern passes whole
    let (code, out, err) = curl(&["-x", &proxy_url(&p), &format!("http://{good}/")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello forbiddance and the rest");

    let raw = raw_exchange(&p, &format!("http://{bad}/")).await;
    let text = String::from_utf8_lossy(&raw);
    // the head went out long before the second chunk, so the response is cut
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello forbid"), "{text}");
    assert!(
        !text.contains("den-word"),
        "the matching chunk was forwarded: {text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the cut response looks complete: {text}"
    );
    assert!(p.log().contains("response cut"), "{}", p.log());
    let (code, _, _) = curl(&["-x", &proxy_url(&p), &format!("http://{bad}/")]).await;
    assert_ne!(code, 0, "curl must see a failed transfer");
    assert!(p.log().contains("forbidden-word"), "{}", p.log());
}

/// `filter.hold_head_bytes`: the origin sends its head, pauses, then the body, so the head
/// is alone in Pingora's first batch. Held, a pattern at byte 3000 gets the proxy's 403
/// page; not held (the default), the same response is cut. Clean responses pass whole and
/// byte-exact with holding on, whether they end inside the window or run past it, and a
/// pattern past the window still cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_head_turns_an_early_body_match_into_the_403_page() {
    let pause = Duration::from_millis(300);
    let head = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes()
    };
    let mut bad_body = vec![b'a'; 3000];
    bad_body.extend_from_slice(b"forbidden-word");
    bad_body.extend_from_slice(&[b'b'; 2000]);
    let (bad, _) = scripted(vec![
        (Duration::ZERO, head(bad_body.len())),
        (pause, bad_body.clone()),
    ])
    .await;
    // clean, 20000 bytes in three writes: runs past the window
    let long: Vec<u8> = (0..20_000u32)
        .map(|i| b"abcdefghij"[(i % 10) as usize])
        .collect();
    let (good_long, _) = scripted(vec![
        (Duration::ZERO, head(long.len())),
        (pause, long[..3000].to_vec()),
        (pause, long[3000..13_000].to_vec()),
        (Duration::ZERO, long[13_000..].to_vec()),
    ])
    .await;
    // clean, chunked, ends inside the window
    let (good_short, _) = scripted(vec![
        (
            Duration::ZERO,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
        ),
        (pause, chunk(b"short and ")),
        (pause, chunk(b"clean")),
        (Duration::ZERO, b"0\r\n\r\n".to_vec()),
    ])
    .await;
    // the pattern at byte 9000, past the window
    let mut late = vec![b'c'; 9000];
    late.extend_from_slice(b"forbidden-word tail");
    let (bad_late, _) = scripted(vec![
        (Duration::ZERO, head(late.len())),
        (pause, late[..9000].to_vec()),
        (pause, late[9000..].to_vec()),
    ])
    .await;
    let cfg = "listeners:
  - name: held
    address: 127.0.0.1:{{port}}
    protocol: http
    forward_proxy:
      allow_private_destinations: true
      access: [{action: allow}]
      filter: {block_body_patterns: [forbidden-word], hold_head_bytes: 8192}
  - name: plain
    address: 127.0.0.1:{{port1}}
    protocol: http
    forward_proxy:
      allow_private_destinations: true
      access: [{action: allow}]
      filter: {block_body_patterns: [forbidden-word]}
";
    let p = Proxy::start(cfg);
    let body_of = |raw: &[u8]| {
        let at = crate::support::client::find(raw, b"\r\n\r\n").expect("a response head") + 4;
        raw[at..].to_vec()
    };

    // held: the 403 page, nothing of the origin's response
    let raw = raw_exchange(&p, &format!("http://{bad}/")).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("content filter"), "{text}");
    assert!(!text.contains("aaaa") && !text.contains("200 OK"), "{text}");
    assert!(
        p.log().contains("403: response blocked, body contains"),
        "{}",
        p.log()
    );

    // not held: the same response is cut (today's behaviour); the head may not even have
    // left the proxy's write buffer, so the client may see the connection close at once
    let mut s = TcpStream::connect(p.addr_of(1)).await.expect("connect");
    s.write_all(
        format!("GET http://{bad}/ HTTP/1.1\r\nHost: {bad}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("403"),
        "not held, yet answered the page: {text}"
    );
    assert!(!text.contains("forbidden-word"), "{text}");
    assert!(
        raw.is_empty()
            || (text.starts_with("HTTP/1.1 200") && body_of(&raw).len() < bad_body.len()),
        "{text}"
    );
    assert!(p.log().contains("response cut"), "{}", p.log());

    // held, clean: complete and byte-exact, past the window and inside it
    let raw = raw_exchange(&p, &format!("http://{good_long}/")).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(body_of(&raw), long, "the long clean body changed");
    let r = absolute(&p, "GET", &format!("http://{good_short}/"), &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "short and clean"));
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "a held response closes"
    );
    let (code, out, err) = curl(&["-x", &proxy_url(&p), &format!("http://{good_long}/")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.as_bytes(), &long[..]);

    // held, a match past the window: cut
    let raw = raw_exchange(&p, &format!("http://{bad_late}/")).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("forbidden-word"), "{text}");
    assert!(body_of(&raw).len() < late.len(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_pattern_inside_gzip_is_found() {
    use std::io::Write;
    let gz = |text: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let filler: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
        e.write_all(&filler).expect("gz");
        e.write_all(text).expect("gz");
        e.finish().expect("gz")
    };
    let serve = |body: Vec<u8>| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let half = body.len() / 2;
        vec![
            (Duration::ZERO, head.into_bytes()),
            (Duration::ZERO, body[..half].to_vec()),
            (Duration::from_millis(300), body[half..].to_vec()),
        ]
    };
    let (bad, _) = scripted(serve(gz(b"<p>a Forbidden-Word here</p>"))).await;
    let clean = gz(b"<p>all fine</p>");
    let (good, _) = scripted(serve(clean.clone())).await;
    let p = Proxy::start(&fwd(&format!("{OPEN}\n{FILTER}")));

    let r = absolute(
        &p,
        "GET",
        &format!("http://{good}/"),
        &[("Accept-Encoding", "gzip")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, clean, "a clean gzip body passes unchanged");

    let raw = raw_exchange(&p, &format!("http://{bad}/")).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body_len = raw.len() - (crate::support::client::find(&raw, b"\r\n\r\n").expect("head") + 4);
    let full = gz(b"<p>a Forbidden-Word here</p>").len();
    assert!(
        body_len < full,
        "the whole gzip body went through ({body_len} of {full})"
    );
    assert!(p.log().contains("response cut"), "{}", p.log());
    assert!(p.log().contains("forbidden-word"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_and_url_blocks_answer_the_proxy_page() {
    let exe = OriginBuilder::new("exe")
        .header("Content-Type", "application/x-msdownload")
        .body("MZ...")
        .run()
        .await;
    let o = OriginBuilder::new("fine").run().await;
    let p = Proxy::start(&fwd(&format!("{OPEN}\n{FILTER}")));

    let r = absolute(&p, "GET", &format!("http://{}/setup.exe", exe.addr), &[]).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("content filter"), "{}", r.text());
    assert!(!r.text().contains("MZ"), "{}", r.text());

    let r = absolute(&p, "GET", &format!("http://{}/malware/x", o.addr), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(o.requests(), 0, "a blocked URL never reaches the origin");
    let r = absolute(&p, "GET", &format!("http://{}/fine", o.addr), &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "fine"));
}
