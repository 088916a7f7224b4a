//! Strict checks on the raw bytes of an HTTP/1 request head, before Pingora parses it.
//!
//! Request smuggling lives in the gap between two parsers that read the same bytes
//! differently: a proxy that tolerates a lax form and a backend that reads it another way.
//! Pingora's parser (httparse) is lenient where RFC 9112 allows it to be (bare LF line ends)
//! and normalises some ambiguous framing instead of refusing it (Content-Length with
//! Transfer-Encoding: it drops the length; `chunked, chunked`: it takes the last token).
//! An edge proxy has no old clients to be kind to, so [`check_head`] refuses every form that
//! some parser on the way could read differently, with 400 (or 501 for a transfer coding we
//! do not implement), and names the reason for the log line. It runs on the exact bytes the
//! client sent, in the request-head guard (the guard of the HTTP engines), so nothing ambiguous is parsed,
//! routed or forwarded.
//!
//! Refused: bare LF or bare CR as a line end or inside a line, NUL and other control bytes,
//! obs-fold (a line starting with whitespace), whitespace or any non-token byte in a field
//! name (so `Name : v` is refused), Content-Length together with Transfer-Encoding, several
//! Content-Length values that differ or are not plain digits, and a Transfer-Encoding other
//! than exactly one final `chunked`, and an absolute-form target whose host differs from the
//! Host field (the router and the backend would each pick a different one), a request line
//! that is not exactly `METHOD SP TARGET SP VERSION` (a space in the target), more than
//! one Host field, an HTTP/1.1 request without Host (RFC 9112 §3.2), and a `Connection`
//! field nominating a field the proxy relies on (Host, framing, X-Forwarded-*).

/// Why a head was refused: the status to answer and a reason for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

fn refuse<T>(reason: &'static str) -> Result<T, Refusal> {
    Err(Refusal {
        status: 400,
        reason,
    })
}

/// Fields a `Connection` field may not nominate: dropping them as hop-by-hop would change
/// the request's routing, framing or forwarding record at the next hop.
const PROTECTED: &[&[u8]] = &[
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
];

/// How the body after an accepted head is framed, for the guard to hand on exactly one
/// request at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Framing {
    /// A Content-Length (none and no chunked: no body, RFC 9112 §6.3).
    pub length: Option<u64>,
    pub chunked: bool,
    /// CONNECT or an `Upgrade` field: the connection may turn into a tunnel.
    pub tunnel: bool,
}

/// The class of each byte for the line scan: most bytes are [`PLAIN`], so the scan is one
/// table load and one compare per byte (this scan was the proxy's top function per GET).
const PLAIN: u8 = 0;
const LF: u8 = 1;
const CR: u8 = 2;
const NUL: u8 = 3;
const TAB: u8 = 4;
const CONTROL: u8 = 5;

static CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = CONTROL;
        b += 1;
    }
    t[0x7f] = CONTROL;
    t[0] = NUL;
    t[b'\t' as usize] = TAB;
    t[b'\n' as usize] = LF;
    t[b'\r' as usize] = CR;
    t
};

/// RFC 9110 tchar, as a table.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// Whether any byte of `w` is below 0x20 or is 0x7f (exact: the borrow of the subtraction
/// can only mark bytes above one that already matched).
fn has_control(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(0x20 * ONES) & !w & HIGHS;
    let x = w ^ (0x7f * ONES);
    let del = x.wrapping_sub(ONES) & !x & HIGHS;
    (below_space | del) != 0
}

/// The first line of `rest` without its CRLF, and what follows it, in one pass over the
/// bytes: a line ends only at CRLF; a bare CR or LF, NUL or another control byte (a tab
/// only in the request line) is the reason to refuse.
fn split_line(rest: &[u8], request_line: bool) -> Result<(&[u8], &[u8]), &'static str> {
    let mut i = 0;
    // eight bytes at a time while none of them is a control byte
    while let Some(w) = rest.get(i..i + 8) {
        let Ok(w) = <[u8; 8]>::try_from(w) else {
            break;
        };
        if has_control(u64::from_le_bytes(w)) {
            break;
        }
        i += 8;
    }
    loop {
        let Some(&b) = rest.get(i) else {
            return Err("request head without a final line end");
        };
        match CLASS[b as usize] {
            PLAIN => {}
            CR => {
                return match rest.get(i + 1) {
                    Some(b'\n') => Ok((&rest[..i], &rest[i + 2..])),
                    Some(_) => Err("bare CR inside a line"),
                    None => Err("request head without a final line end"),
                };
            }
            LF => return Err("bare LF line end"),
            NUL => return Err("NUL byte in the request head"),
            TAB if !request_line => {}
            _ => return Err("control byte in the request head"),
        }
        i += 1;
    }
}

/// Check a complete request head: the request line, the header lines and the empty line
/// that ends it (leading empty lines already skipped).
pub fn check_head(head: &[u8]) -> Result<Framing, Refusal> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = 0usize;
    let mut te_value: &[u8] = b"";
    let mut first = true;
    let mut target_authority: Option<&[u8]> = None;
    let mut host: Option<&[u8]> = None;
    let mut http11 = false;
    let mut tunnel = false;
    let mut rest = head;
    while !rest.is_empty() {
        let line = match split_line(rest, first) {
            Ok((line, next)) => {
                rest = next;
                line
            }
            Err(reason) => return refuse(reason),
        };
        if first {
            first = false;
            // exactly METHOD SP TARGET SP VERSION: a space inside the target is not
            // silently re-encoded by one parser and split by another (RFC 9112 3)
            let mut parts = line.split(|&b| b == b' ');
            let shape = (parts.next(), parts.next(), parts.next(), parts.next());
            let (Some(m), Some(t), Some(v), None) = shape else {
                return refuse("request line is not METHOD SP TARGET SP VERSION");
            };
            if m.is_empty() || t.is_empty() || v.is_empty() || !m.iter().all(|&b| is_tchar(b)) {
                return refuse("request line is not METHOD SP TARGET SP VERSION");
            }
            target_authority = absolute_authority(line);
            http11 = line.ends_with(b" HTTP/1.1");
            tunnel = line.starts_with(b"CONNECT ");
            continue;
        }
        if line.is_empty() {
            // the empty line ends the head; the guard hands over nothing past it
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return refuse("obs-fold (header line starting with whitespace)");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return refuse("header line without a colon");
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() {
            return refuse("empty header name");
        }
        if name.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return refuse("whitespace before the colon of a header");
        }
        if !name.iter().all(|&b| is_tchar(b)) {
            return refuse("invalid byte in a header name");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            for v in value.split(|&b| b == b',') {
                let v = v.trim_ascii();
                if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                    return refuse("invalid Content-Length");
                }
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                let Some(n) = n else {
                    return refuse("invalid Content-Length");
                };
                match content_length {
                    Some(prev) if prev != n => return refuse("differing Content-Length values"),
                    _ => content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding += 1;
            te_value = value;
        } else if name.eq_ignore_ascii_case(b"host") {
            // RFC 9112 3.2: 400. The router reads the first, other servers the last.
            if host.is_some() {
                return refuse("several Host fields");
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            tunnel = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in super::fields::tokens(value) {
                if PROTECTED.iter().any(|p| t.eq_ignore_ascii_case(p)) {
                    return refuse("Connection nominates a field the proxy relies on");
                }
            }
        }
    }
    if http11 && host.is_none() {
        // RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
        return refuse("HTTP/1.1 request without Host");
    }
    if let (Some(a), Some(h)) = (target_authority, host) {
        if !a.eq_ignore_ascii_case(h) {
            return refuse("absolute-form target whose host differs from Host");
        }
    }
    if transfer_encoding == 0 {
        return Ok(Framing {
            length: content_length,
            chunked: false,
            tunnel,
        });
    }
    if content_length.is_some() {
        return refuse("Content-Length together with Transfer-Encoding");
    }
    if transfer_encoding > 1 {
        return refuse("several Transfer-Encoding fields");
    }
    let codings: Vec<&[u8]> = te_value
        .split(|&b| b == b',')
        .map(|c| c.trim_ascii())
        .collect();
    if codings.iter().any(|c| c.is_empty()) {
        return refuse("empty transfer coding");
    }
    let chunked = codings
        .iter()
        .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
        .count();
    if !codings
        .last()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
    {
        return refuse("Transfer-Encoding whose final coding is not chunked");
    }
    if chunked > 1 {
        return refuse("chunked applied more than once");
    }
    if codings.len() > 1 {
        return Err(Refusal {
            status: 501,
            reason: "transfer coding other than chunked",
        });
    }
    Ok(Framing {
        length: None,
        chunked: true,
        tunnel,
    })
}

/// The authority of an `http://` or `https://` absolute-form request target.
fn absolute_authority(request_line: &[u8]) -> Option<&[u8]> {
    let mut parts = request_line.split(|&b| b == b' ');
    let target = parts.nth(1)?;
    let colon = target.iter().position(|&b| b == b':')?;
    let scheme = &target[..colon];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return None;
    }
    let rest = target[colon + 1..].strip_prefix(b"//")?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[&str]) -> Vec<u8> {
        let mut v = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for l in lines {
            v.extend_from_slice(l.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    fn status(lines: &[&str]) -> u16 {
        match check_head(&head(lines)) {
            Ok(_) => 200,
            Err(r) => r.status,
        }
    }

    #[test]
    fn word_scan_finds_every_control_byte() {
        for fill in [b'a', b' ', 0x80, 0xff] {
            for b in 0..=255u8 {
                for at in 0..8 {
                    let mut w = [fill; 8];
                    w[at] = b;
                    let control = b < 0x20 || b == 0x7f;
                    let got = has_control(u64::from_le_bytes(w));
                    assert_eq!(got, control, "{b:#x} at {at} among {fill:#x}");
                }
            }
        }
    }

    #[test]
    fn accepts_ordinary_heads() {
        assert_eq!(status(&[]), 200);
        assert_eq!(status(&["Content-Length: 5", "X-A: b\tc"]), 200);
        assert_eq!(status(&["Content-Length: 5", "content-length: 5"]), 200);
        assert_eq!(status(&["Content-Length: 5, 5"]), 200);
        assert_eq!(status(&["Transfer-Encoding: chunked"]), 200);
        assert_eq!(status(&["Transfer-Encoding:  \tChunked  "]), 200);
        assert_eq!(status(&["Empty:"]), 200);
    }

    #[test]
    fn refuses_ambiguous_framing() {
        assert_eq!(
            status(&["Content-Length: 5", "Transfer-Encoding: chunked"]),
            400
        );
        assert_eq!(status(&["Content-Length: 5", "Content-Length: 6"]), 400);
        assert_eq!(status(&["Content-Length: 5, 6"]), 400);
        assert_eq!(status(&["Content-Length: +5"]), 400);
        assert_eq!(status(&["Content-Length: 0x10"]), 400);
        assert_eq!(status(&["Content-Length: 99999999999999999999999"]), 400);
        assert_eq!(status(&["Transfer-Encoding: chunked, chunked"]), 400);
        assert_eq!(status(&["Transfer-Encoding: gzip"]), 400);
        assert_eq!(status(&["Transfer-Encoding: xchunked"]), 400);
        assert_eq!(status(&["Transfer-Encoding: chunked, gzip"]), 400);
        assert_eq!(status(&["Transfer-Encoding: ,chunked"]), 400);
        assert_eq!(
            status(&["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]),
            400
        );
        assert_eq!(status(&["Transfer-Encoding: gzip, chunked"]), 501);
    }

    #[test]
    fn refuses_lax_syntax() {
        assert_eq!(status(&["X-A: b", " folded"]), 400);
        assert_eq!(status(&["X-A: b", "\tfolded"]), 400);
        assert_eq!(status(&["Transfer-Encoding : chunked"]), 400);
        assert_eq!(status(&["X-A: b\0c"]), 400);
        assert_eq!(status(&["X-A: b\rc"]), 400);
        assert_eq!(status(&["X-A: b\nTransfer-Encoding: chunked"]), 400);
        assert_eq!(status(&["X-A: b\x01"]), 400);
        assert_eq!(status(&["X(A): b"]), 400);
        assert_eq!(status(&[": b"]), 400);
        assert_eq!(status(&["no colon"]), 400);
        assert!(check_head(b"GET / HTTP/1.1\nHost: a\n\n").is_err());
        assert!(check_head(b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n").is_err());
        assert!(check_head(b"GET / HTTP/1.1\r\nHost: a\r\n").is_ok());
    }

    /// Found while writing the `strict` fuzz target's properties: with two Host fields the
    /// router routed by the first while the absolute-form check compared the last.
    #[test]
    fn refuses_several_hosts() {
        assert_eq!(status(&["Host: b"]), 400);
        assert_eq!(status(&["host: a"]), 400);
        let h = b"GET http://b/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        assert!(check_head(h).is_err());
    }

    #[test]
    fn absolute_form_host_must_match() {
        let h = |l: &str| check_head(format!("{l}\r\n\r\n").as_bytes()).map_err(|r| r.status);
        assert!(h("GET http://a/x HTTP/1.1\r\nHost: a").is_ok());
        assert!(h("GET HTTP://A:80?q HTTP/1.1\r\nHost: a:80").is_ok());
        // RFC 9112 3.2: Host is required of HTTP/1.1 whatever the target's form
        assert_eq!(h("GET http://a/x HTTP/1.1"), Err(400));
        assert!(h("GET http://a/x HTTP/1.0").is_ok());
        assert_eq!(h("GET http://evil/x HTTP/1.1\r\nHost: a"), Err(400));
        assert_eq!(h("GET https://evil HTTP/1.1\r\nHost: a"), Err(400));
    }
}
