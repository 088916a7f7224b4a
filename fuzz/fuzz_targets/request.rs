//! The lean engine's plan for a client's request (src/http/fast/mod.rs, through the
//! library's `fuzz_request` hook): the head it writes for the backend is the request-side
//! half of smuggling, where the proxy and the backend must agree on where a request ends.
//!
//! Input: one byte choosing the client address (none, IPv4, IPv6), how many requests the
//! connection carried before (0 to 3, of the listener's 3) and whether the process is
//! draining, then the bytes of one read. Heads the strict checks refuse never reach the engine, so only those they accept
//! are planned. Besides "no panic": a forwarded request's head parses whole, with the
//! client's method and target; it carries the client's fields in their order, byte for byte,
//! except the hop-by-hop ones, the framing and the X-Forwarded-* set, which the proxy writes
//! itself: one Content-Length equal to the client's, or for a chunked body one
//! `transfer-encoding: chunked`, Connection and
//! Upgrade only for a relayed upgrade (any protocol but h2c), one X-Forwarded-For: the
//! client's ones joined, then its address; the body bytes that came with the head follow
//! it, no more than the length, and the rest is left for the next request. A chunked body's
//! bytes follow it decoded and framed again as one chunk (no extension, no trailer), the
//! last chunk after them if the body ended there, and what a reference decoder takes of the
//! client's bytes is what the engine took. A connection is
//! not kept alive after a request that asked to close, while draining, after its third
//! request, nor after an answer that left the request's body unread (its bytes would be read
//! as the next request).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use stepstone::http::fast::{fuzz_request, FuzzPlan};
use stepstone::policy::head::check_head;

/// Fields the proxy never passes on as the client wrote them, written out here rather than
/// imported from `policy::fields`: a property that shared the code's own list could not
/// catch a name missing from it. Names with `_` are dropped too (as nginx does).
const OWNED: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

fn owned(name: &str) -> bool {
    name.contains('_') || OWNED.iter().any(|o| name.eq_ignore_ascii_case(o))
}

fn tokens(v: &[u8]) -> Vec<String> {
    v.split(|&b| b == b',')
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

type Field = (String, Vec<u8>);

/// Method, target, HTTP/1 minor version and fields of a complete head, and its length.
fn parse(head: &[u8]) -> Option<(String, String, u8, Vec<Field>, usize)> {
    let mut hdrs = [httparse::EMPTY_HEADER; 256];
    let mut r = httparse::Request::new(&mut hdrs);
    let n = match r.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let fields = r
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    Some((
        r.method?.to_string(),
        r.path?.to_string(),
        r.version?,
        fields,
        n,
    ))
}

fn all<'a>(fields: &'a [Field], name: &str) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// A reference decoder of the start of a chunked body, written apart from the engine's
/// scanner: its data (a chunk's part included), whether it ended, and the bytes that took;
/// `None` when its framing is broken.
fn decode(b: &[u8]) -> Option<(Vec<u8>, bool, usize)> {
    let mut data = Vec::new();
    let mut at = 0;
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let rel = b[at..].windows(2).position(|w| w == b"\r\n")?;
        Some((&b[at..at + rel], at + rel + 2))
    };
    loop {
        let Some((size_line, next)) = line(at) else {
            return Some((data, false, b.len()));
        };
        let digits = size_line
            .iter()
            .position(|c| !c.is_ascii_hexdigit())
            .unwrap_or(size_line.len());
        let size =
            usize::from_str_radix(std::str::from_utf8(&size_line[..digits]).ok()?, 16).ok()?;
        at = next;
        if size == 0 {
            // trailer lines up to the empty one
            loop {
                let Some((l, next)) = line(at) else {
                    return Some((data, false, b.len()));
                };
                at = next;
                if l.is_empty() {
                    return Some((data, true, at));
                }
            }
        }
        let avail = b.len() - at;
        if avail < size + 2 {
            data.extend_from_slice(&b[at..at + avail.min(size)]);
            return Some((data, false, b.len()));
        }
        data.extend_from_slice(&b[at..at + size]);
        if &b[at + size..at + size + 2] != b"\r\n" {
            return None;
        }
        at += size + 2;
    }
}

fn one<'a>(fields: &'a [Field], name: &str) -> &'a [u8] {
    let v = all(fields, name);
    assert_eq!(v.len(), 1, "{name}: {v:?}");
    v[0]
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let client = match pick % 3 {
        0 => None,
        1 => Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
        _ => Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))),
    };
    let served = u32::from((pick >> 2) & 3);
    let draining = pick & 0x10 != 0;
    // What the guard lets through: a complete head the strict checks accept, without the
    // empty lines it skips before a request line.
    if matches!(bytes.first(), None | Some(b'\r' | b'\n')) {
        return;
    }
    let Some(end) = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
    else {
        return;
    };
    if check_head(&bytes[..end]).is_err() {
        return;
    }
    let plan = fuzz_request(bytes, client, served, draining);
    let Some((method, target, _, fields, n)) = parse(bytes) else {
        // the engine took a head httparse cannot read
        assert!(matches!(plan, FuzzPlan::Fallback), "{plan:?}");
        return;
    };
    assert_eq!(n, end, "the head ends where the checks found its end");
    let conn = all(&fields, "connection")
        .iter()
        .flat_map(|v| tokens(v))
        .collect::<Vec<_>>();
    // this one is the connection's third (the listener's limit), or later
    let close = conn.iter().any(|t| t == "close") || draining || served >= 2;
    let (out, body_left, chunks_left, pipelined, upgrade, want_keep) = match plan {
        FuzzPlan::Fallback => return,
        FuzzPlan::Answer {
            status,
            keep,
            body_left,
            chunks_left,
        } => {
            assert!((400..600).contains(&status), "answered {status}");
            assert!(
                !(close && keep),
                "kept alive: close, draining or the last request"
            );
            assert!(
                !((body_left > 0 || chunks_left) && keep),
                "kept alive with {body_left} body bytes unread"
            );
            return;
        }
        FuzzPlan::Proxy {
            out,
            body_left,
            chunks_left,
            pipelined,
            upgrade,
            want_keep,
        } => (out, body_left, chunks_left, pipelined, upgrade, want_keep),
    };
    assert!(
        !(close && want_keep),
        "kept alive: close, draining or the last request"
    );
    let chunked = !all(&fields, "transfer-encoding").is_empty();

    let (m2, t2, v2, f2, n2) = parse(&out).unwrap_or_else(|| {
        panic!(
            "the backend's head does not parse: {:?}",
            String::from_utf8_lossy(&out)
        )
    });
    assert_eq!(
        (m2.as_str(), t2.as_str()),
        (method.as_str(), target.as_str())
    );
    assert_eq!(v2, 1, "the backend is spoken to in HTTP/1.1");

    // the client's own fields, in order, byte for byte (but those its Connection named)
    let named = |n: &str| conn.iter().any(|t| n.eq_ignore_ascii_case(t));
    let kept: Vec<&Field> = fields
        .iter()
        .filter(|(n, _)| !owned(n) && !named(n))
        .collect();
    let passed: Vec<&Field> = f2.iter().filter(|(n, _)| !owned(n)).collect();
    assert_eq!(passed, kept, "the client's fields as passed on");

    // framing: the client's length, once, and nothing else
    let lengths: Vec<u64> = all(&fields, "content-length")
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|v| {
            std::str::from_utf8(v.trim_ascii())
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("the checks accepted a Content-Length that is no number")
        })
        .collect();
    assert!(lengths.windows(2).all(|w| w[0] == w[1]), "{lengths:?}");
    let len = lengths.first().copied();
    let out_len = all(&f2, "content-length");
    match len {
        Some(l) => assert_eq!(out_len, [l.to_string().as_bytes()]),
        None => assert!(out_len.is_empty(), "a length the client did not send"),
    }
    if chunked {
        assert_eq!(len, None, "the checks accepted a length beside chunked");
        assert_eq!(all(&f2, "transfer-encoding"), [b"chunked"]);
        assert_eq!(body_left, 0);
        let sent = &bytes[end..];
        let (data, ended, took) =
            decode(sent).expect("the engine took a chunked body the reference cannot decode");
        assert_eq!(
            pipelined,
            sent.len() - took,
            "bytes left for the next request"
        );
        assert_eq!(chunks_left, !ended, "whether more of the body is to come");
        let mut want = Vec::new();
        if !data.is_empty() {
            want.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            want.extend_from_slice(&data);
            want.extend_from_slice(b"\r\n");
        }
        if ended {
            want.extend_from_slice(b"0\r\n\r\n");
        }
        assert_eq!(
            &out[n2..],
            &want[..],
            "the body bytes sent with the head, framed again"
        );
    } else {
        assert!(!chunks_left);
        assert!(all(&f2, "transfer-encoding").is_empty());
        let l = len.unwrap_or(0);
        let body = &out[n2..];
        let came = (bytes.len() - end) as u64;
        let in_buf = came.min(l) as usize;
        assert_eq!(
            body,
            &bytes[end..end + in_buf],
            "the body bytes sent with the head"
        );
        assert_eq!(body_left, l - in_buf as u64, "body still to relay");
        assert_eq!(
            pipelined,
            bytes.len() - end - in_buf,
            "bytes left for the next request"
        );
    }

    // hop by hop: nothing of the client's; Connection and Upgrade only for a WebSocket
    for name in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "http2-settings",
    ] {
        assert!(all(&f2, name).is_empty(), "{name} passed on");
    }
    for name in ["proxy-authorization", "proxy-authenticate"] {
        assert!(all(&f2, name).is_empty(), "{name} passed on");
    }
    assert!(f2.iter().all(|(n, _)| !n.contains('_')), "a name with _");
    if upgrade {
        assert_eq!(method, "GET");
        assert_eq!(one(&f2, "connection"), b"upgrade");
        let asked = all(&fields, "upgrade");
        assert_eq!(asked.len(), 1);
        assert_eq!(one(&f2, "upgrade"), asked[0].trim_ascii());
        // relayed end to end: any protocol but h2c, an upgrade of this hop only
        let protocols = tokens(asked[0]);
        assert!(
            !protocols.is_empty() && protocols.iter().all(|t| t != "h2c"),
            "{asked:?}"
        );
        assert!(len.unwrap_or(0) == 0, "an upgrade with a body");
    } else {
        assert!(all(&f2, "connection").is_empty(), "Connection passed on");
        assert!(all(&f2, "upgrade").is_empty(), "Upgrade passed on");
    }
    // a field the client's Connection named is gone, whatever its name
    for t in &conn {
        if t != "close" && t != "keep-alive" && t != "upgrade" {
            assert!(all(&f2, t).is_empty(), "{t} was named by Connection");
        }
    }

    // X-Forwarded-*: the proxy's, once each
    match client {
        Some(ip) => {
            // the client's fields joined in order (empty ones add nothing), then the client;
            // a joined chain of 400 bytes or more is dropped whole
            let parts: Vec<&[u8]> = (all(&fields, "x-forwarded-for").into_iter())
                .map(<[u8]>::trim_ascii)
                .filter(|p| !p.is_empty())
                .collect();
            let mut want = parts.join(&b", "[..]);
            if want.len() >= 400 {
                want.clear();
            }
            if !want.is_empty() {
                want.extend_from_slice(b", ");
            }
            want.extend_from_slice(ip.to_string().as_bytes());
            let xff = one(&f2, "x-forwarded-for");
            assert_eq!(
                xff,
                want.as_slice(),
                "X-Forwarded-For {:?}",
                String::from_utf8_lossy(xff)
            );
        }
        None => assert!(all(&f2, "x-forwarded-for").is_empty()),
    }
    assert_eq!(one(&f2, "x-forwarded-proto"), b"http");
    match all(&fields, "host").as_slice() {
        [h] => {
            assert_eq!(one(&f2, "host"), *h);
            assert_eq!(one(&f2, "x-forwarded-host"), *h);
        }
        [] => assert!(all(&f2, "x-forwarded-host").is_empty()),
        more => panic!("the checks accepted {} Host fields", more.len()),
    }
});
