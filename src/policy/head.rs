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

use super::fields::{self, Field};
use super::scan;

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

/// The first line of `rest` without its CRLF, and what follows it: a line ends only at
/// CRLF; a bare CR or LF, NUL or another control byte (a tab only in the request line) is
/// the reason to refuse.
fn split_line(rest: &[u8], request_line: bool) -> Result<(&[u8], &[u8]), &'static str> {
    const UNENDED: &str = "request head without a final line end";
    let mut from = 0;
    loop {
        let i = scan::next_control(rest, from).ok_or(UNENDED)?;
        match rest[i] {
            b'\r' => {
                return match rest.get(i + 1) {
                    Some(b'\n') => Ok((&rest[..i], &rest[i + 2..])),
                    Some(_) => Err("bare CR inside a line"),
                    None => Err(UNENDED),
                };
            }
            b'\t' if !request_line => from = i + 1,
            b'\n' => return Err("bare LF line end"),
            0 => return Err("NUL byte in the request head"),
            _ => return Err("control byte in the request head"),
        }
    }
}

/// The request line as `(method, target, version)`: exactly METHOD SP TARGET SP VERSION, so
/// a space inside the target is not silently re-encoded by one parser and split by another
/// (RFC 9112 3).
fn request_line(line: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let m = line.iter().position(|&b| !is_tchar(b))?;
    if m == 0 || line[m] != b' ' {
        return None;
    }
    let after = &line[m + 1..];
    let t = after.iter().position(|&b| b == b' ')?;
    let (target, version) = (&after[..t], &after[t + 1..]);
    if target.is_empty() || version.is_empty() || version.contains(&b' ') {
        return None;
    }
    Some((&line[..m], target, version))
}

/// Why a header line without a plain `token:` start is refused (the slow path: the scan
/// found a byte other than a colon after the name, or nothing before it).
fn name_refusal(line: &[u8]) -> &'static str {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return "header line without a colon";
    };
    let name = &line[..colon];
    if name.is_empty() {
        "empty header name"
    } else if name.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
        "whitespace before the colon of a header"
    } else {
        "invalid byte in a header name"
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
            let Some((method, target, version)) = request_line(line) else {
                return refuse("request line is not METHOD SP TARGET SP VERSION");
            };
            // origin form (`/...`) has no authority to compare
            if target.first() != Some(&b'/') {
                target_authority = absolute_authority(target);
            }
            http11 = version == b"HTTP/1.1";
            tunnel = method == b"CONNECT";
            continue;
        }
        if line.is_empty() {
            // the empty line ends the head; the guard hands over nothing past it
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return refuse("obs-fold (header line starting with whitespace)");
        }
        // a name is tchars up to the colon; anything else takes the slow path for its reason
        let colon = match scan::name_end(line, 0, is_tchar) {
            c if c > 0 && line.get(c) == Some(&b':') => c,
            _ => return refuse(name_refusal(line)),
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        match fields::classify_framing(name) {
            Field::ContentLength => {
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
                        Some(prev) if prev != n => {
                            return refuse("differing Content-Length values")
                        }
                        _ => content_length = Some(n),
                    }
                }
            }
            Field::TransferEncoding => {
                transfer_encoding += 1;
                te_value = value;
            }
            Field::Host => {
                // RFC 9112 3.2: 400. The router reads the first, other servers the last.
                if host.is_some() {
                    return refuse("several Host fields");
                }
                host = Some(value);
            }
            Field::Upgrade => tunnel = true,
            Field::Connection => {
                for t in fields::tokens(value) {
                    if PROTECTED.iter().any(|p| t.eq_ignore_ascii_case(p)) {
                        return refuse("Connection nominates a field the proxy relies on");
                    }
                }
            }
            _ => {}
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
fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
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
    fn names_the_reason() {
        let reason = |h: &[u8]| check_head(h).err().map(|r| r.reason);
        let cases: &[(&[u8], &str)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\nc\r\n\r\n",
                "bare LF line end",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
                "bare CR inside a line",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: \0\r\n\r\n",
                "NUL byte in the request head",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n",
                "control byte in the request head",
            ),
            (
                b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
                "control byte in the request head",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b",
                "request head without a final line end",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r",
                "request head without a final line end",
            ),
            (
                b"GET /a b HTTP/1.1\r\n\r\n",
                "request line is not METHOD SP TARGET SP VERSION",
            ),
            (
                b"GET  / HTTP/1.1\r\n\r\n",
                "request line is not METHOD SP TARGET SP VERSION",
            ),
            (
                b"GET / \r\n\r\n",
                "request line is not METHOD SP TARGET SP VERSION",
            ),
            (
                b"GET /\r\n\r\n",
                "request line is not METHOD SP TARGET SP VERSION",
            ),
            (
                b" GET / HTTP/1.1\r\n\r\n",
                "request line is not METHOD SP TARGET SP VERSION",
            ),
            (
                b"G(T / HTTP/1.1\r\n\r\n",
                "request line is not METHOD SP TARGET SP VERSION",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\tX: b\r\n\r\n",
                "obs-fold (header line starting with whitespace)",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A b\r\n\r\n",
                "header line without a colon",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
                "empty header name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A\t: b\r\n\r\n",
                "whitespace before the colon of a header",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n",
                "invalid byte in a header name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
                "invalid byte in a header name",
            ),
            (
                b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
                "HTTP/1.1 request without Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nhOST: a\r\n\r\n",
                "several Host fields",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, Host\r\n\r\n",
                "Connection nominates a field the proxy relies on",
            ),
        ];
        for (head, want) in cases {
            assert_eq!(
                reason(head),
                Some(*want),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // tabs inside a header value, absolute form, CONNECT and Upgrade are accepted
        let ok = check_head(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nX: b\tc\r\n\r\n");
        assert_eq!(ok.map(|f| f.tunnel), Ok(true));
        let ok = check_head(b"GET / HTTP/1.1\r\nHost: a\r\nUPGRADE: ws\r\n\r\n");
        assert_eq!(ok.map(|f| f.tunnel), Ok(true));
        let ok = check_head(b"GET http://a/ HTTP/1.0\r\n\r\n");
        assert_eq!(ok.map(|f| f.tunnel), Ok(false));
        let ok = check_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(ok.map(|f| f.length), Ok(Some(12)));
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
