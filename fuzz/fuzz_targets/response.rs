//! The lean engine's parse of a backend's response head (src/http/fast/response.rs), which
//! every response on the HTTP/1 fast path and the HTTP/2 engine goes through. A backend is
//! the operator's, but a broken or compromised one must not crash the proxy or make it
//! send a client something the client would frame differently.
//!
//! Input: one byte of flags (HEAD request, HTTP/2 client, the client's keep-alive, an
//! Upgrade request), one byte choosing a cut, then the bytes from the backend. Besides "no
//! panic": a complete head is never reported for a shorter prefix, and the same head is
//! found when its bytes alone are parsed; the head written for an HTTP/1 client parses
//! whole, with the backend's status, one Connection field that says what the proxy will
//! do, no hop-by-hop field (nor one the backend's Connection named), at most one
//! Content-Length that agrees with the framing, and chunked at most once and last; the
//! fields for an HTTP/2 client carry nothing connection-specific.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stepstone::http::fast::{fuzz_response, FuzzHead};

/// Hop-by-hop fields besides Connection (RFC 9110 §7.6.1, and the proxy-only fields of RFC
/// 9110 §11.7), written out here rather than imported from `policy::fields`: a property
/// that shared the code's own list could not catch a name missing from it.
const HOP: [&str; 7] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

fn tokens(v: &[u8]) -> Vec<String> {
    v.split(|&b| b == b',')
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The names the backend's Connection fields nominate (but keep-alive).
fn nominated(input: &[u8]) -> Vec<String> {
    let mut hdrs = [httparse::EMPTY_HEADER; 256];
    let mut r = httparse::Response::new(&mut hdrs);
    if !matches!(r.parse(input), Ok(httparse::Status::Complete(_))) {
        return Vec::new();
    }
    r.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        // a field called `close` is named too (RFC 9110 §7.6.1); Keep-Alive is hop-by-hop
        .filter(|t| t != "keep-alive")
        .collect()
}

fn check_h1(h: &FuzzHead, input: &[u8]) {
    let mut hdrs = [httparse::EMPTY_HEADER; 256];
    let mut r = httparse::Response::new(&mut hdrs);
    let n = match r.parse(&h.h1) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "the client's head does not parse: {other:?} {:?}",
            String::from_utf8_lossy(&h.h1)
        ),
    };
    assert_eq!(n, h.h1.len(), "bytes after the client's head");
    assert_eq!(r.code, Some(h.code), "status changed");
    if h.upgraded {
        return;
    }
    let named = nominated(input);
    let mut conn = Vec::new();
    let mut lengths = Vec::new();
    let mut te = Vec::new();
    for f in r.headers.iter() {
        let name = f.name.to_ascii_lowercase();
        assert!(
            !HOP.contains(&name.as_str()),
            "hop-by-hop field {name} passed on"
        );
        // the fields the proxy writes or keeps for the framing itself
        let own = ["connection", "content-length", "transfer-encoding", "date"];
        assert!(
            own.contains(&name.as_str()) || !named.contains(&name),
            "field {name} named by the backend's Connection passed on"
        );
        match name.as_str() {
            "connection" => conn.push(f.value.to_vec()),
            "content-length" => lengths.push(f.value.to_vec()),
            "transfer-encoding" => te.extend(tokens(f.value)),
            _ => {}
        }
    }
    let want: &[u8] = if h.client_keep {
        b"keep-alive"
    } else {
        b"close"
    };
    assert_eq!(conn, vec![want.to_vec()], "the Connection field");
    assert!(lengths.len() <= 1, "two Content-Length fields");
    match h.framing {
        ("length", len) if te.is_empty() => {
            assert_eq!(
                lengths,
                vec![len.to_string().into_bytes()],
                "Content-Length against the framing"
            )
        }
        ("chunked", _) => assert!(lengths.is_empty(), "Content-Length beside chunked"),
        ("close", _) => {
            assert!(
                h.rechunk,
                "a close-delimited body not rechunked for an HTTP/1.1 client"
            );
            assert!(lengths.is_empty(), "Content-Length on a rechunked body");
        }
        _ => {}
    }
    if h.framing.0 == "chunked" || h.rechunk {
        assert_eq!(
            te.last().map(String::as_str),
            Some("chunked"),
            "chunked not last: {te:?}"
        );
    }
    assert!(
        te.iter().filter(|t| *t == "chunked").count() <= 1,
        "chunked applied twice: {te:?}"
    );
}

fn check_h2(h: &FuzzHead) {
    let mut lengths = 0;
    for (name, _) in &h.h2 {
        assert!(
            !HOP.contains(&name.as_str()) && name != "connection" && name != "transfer-encoding",
            "connection-specific field {name} for an HTTP/2 client"
        );
        lengths += usize::from(name == "content-length");
    }
    assert!(lengths <= 1, "two Content-Length fields");
}

fuzz_target!(|data: &[u8]| {
    let [flags, cut, input @ ..] = data else {
        return;
    };
    let (head_only, h2, keep, upgrade) = (
        flags & 1 != 0,
        flags & 2 != 0,
        flags & 4 != 0,
        flags & 8 != 0,
    );
    let parse = |b: &[u8]| fuzz_response(b, head_only, h2, keep, upgrade);
    let Ok(Some(h)) = parse(input) else {
        return;
    };
    assert!(h.head_len <= input.len(), "head longer than the input");
    let c = usize::from(*cut) * h.head_len / 256;
    assert!(
        !matches!(parse(&input[..c]), Ok(Some(_))),
        "a head found in {c} of its {} bytes",
        h.head_len
    );
    let alone = parse(&input[..h.head_len])
        .expect("the head alone refused")
        .expect("the head alone incomplete");
    assert_eq!(
        (
            alone.code,
            alone.framing,
            alone.upgraded,
            alone.informational
        ),
        (h.code, h.framing, h.upgraded, h.informational),
        "the head alone parsed differently"
    );
    if h.informational {
        return;
    }
    if h2 {
        check_h2(&h);
    } else {
        check_h1(&h, input);
    }
});
