//! Response compression: whether a response is compressed, with which coding, and how its
//! head changes. The engines only run the chosen encoder over the body.
//!
//! A response is a candidate ([`candidate`]) when the route compresses, it has no
//! `Content-Encoding`, its status carries a body (not 204, 304 or 1xx), its media type is
//! listed, `Cache-Control` has no `no-transform` and its known length is at least
//! `min_size`. A candidate always gets `Vary: Accept-Encoding`, because what a client gets
//! depends on that field even when this one gets the identity. It is compressed when the
//! request is not HEAD, has no `Range` (ranges are served from the identity; the proxy
//! never slices an encoded body) and [`choose`] finds a coding the client accepts.

use crate::config::compression::{Coding, CompressionSpec};
use pingora_http::ResponseHeader;

/// The request's side of the decision.
pub struct Request<'a> {
    pub head: bool,
    pub range: bool,
    /// The `Accept-Encoding` field values, in order.
    pub accept_encoding: &'a [&'a [u8]],
}

/// The q-value of `coding` in `Accept-Encoding` values (RFC 9110 §12.5.3): its own entry,
/// else `*`'s, else 0 (not acceptable). Identity is acceptable unless excluded.
fn q_of(values: &[&[u8]], coding: &str) -> u16 {
    let mut star = None;
    for v in values {
        for item in v.split(|&b| b == b',') {
            let mut parts = item.split(|&b| b == b';');
            let name = trim(parts.next().unwrap_or_default());
            if name.is_empty() {
                continue;
            }
            let mut q = 1000;
            for param in parts {
                let param = trim(param);
                if let Some(value) = param
                    .strip_prefix(b"q=")
                    .or_else(|| param.strip_prefix(b"Q="))
                {
                    q = qvalue(value).unwrap_or(0);
                }
            }
            if name.eq_ignore_ascii_case(coding.as_bytes()) {
                return q;
            }
            if name == b"*" {
                star = Some(q);
            }
        }
    }
    match (star, coding) {
        (Some(q), _) => q,
        (None, "identity") => 1,
        (None, _) => 0,
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// A qvalue in thousandths: `0`, `0.5`, `1.000` (RFC 9110 §12.4.2); `None` when malformed.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut q = match int[0] {
        b'0' => 0u16,
        b'1' => 1000,
        _ => return None,
    };
    for (i, d) in frac.iter().enumerate() {
        q += u16::from(d - b'0') * [100, 10, 1][i];
    }
    (q <= 1000).then_some(q)
}

/// The coding for a client: the route's algorithm with the highest q-value above 0 and not
/// below identity's; on equal q-values the route's order decides.
pub fn choose(spec: &CompressionSpec, accept_encoding: &[&[u8]]) -> Option<(Coding, u32)> {
    if accept_encoding.is_empty() {
        return None;
    }
    let identity = q_of(accept_encoding, "identity");
    let mut best: Option<((Coding, u32), u16)> = None;
    for &(coding, level) in &spec.algorithms {
        let q = q_of(accept_encoding, coding.token());
        if q > 0 && q >= identity && best.is_none_or(|(_, b)| q > b) {
            best = Some(((coding, level), q));
        }
    }
    best.map(|(c, _)| c)
}

/// Whether the response could be compressed for some client (see the module doc).
pub fn candidate(spec: &CompressionSpec, resp: &ResponseHeader) -> bool {
    let code = resp.status.as_u16();
    if code < 200 || code == 204 || code == 304 {
        return false;
    }
    let h = &resp.headers;
    if h.contains_key(http::header::CONTENT_ENCODING) {
        return false;
    }
    let no_transform = h.get_all(http::header::CACHE_CONTROL).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|d| trim(d).eq_ignore_ascii_case(b"no-transform"))
    });
    if no_transform {
        return false;
    }
    let small = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n < spec.min_size);
    if small {
        return false;
    }
    let Some(ct) = h.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let essence = String::from_utf8_lossy(ct.as_bytes());
    let essence = essence
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    spec.content_types.iter().any(|p| p.matches(&essence))
}

/// The decision for one response: `None` leaves it alone; otherwise the head is edited
/// (see [`edit`]) and the coding, if any, is what the body goes through.
pub fn decide(
    spec: Option<&CompressionSpec>,
    req: &Request,
    resp: &ResponseHeader,
) -> Option<Option<(Coding, u32)>> {
    let spec = spec?;
    if !candidate(spec, resp) {
        return None;
    }
    if req.head || req.range {
        return Some(None);
    }
    Some(choose(spec, req.accept_encoding))
}

/// The head of a candidate response: `Vary: Accept-Encoding` merged in; when `coding` is
/// set, `Content-Encoding`, chunked instead of a `Content-Length` (the encoded length is not
/// known before the end), no `Accept-Ranges` (ranges are of the identity), and a strong ETag made weak (the
/// bytes differ, the meaning does not).
pub fn edit(resp: &mut ResponseHeader, coding: Option<Coding>) -> pingora_error::Result<()> {
    let vary = resp
        .headers
        .get_all(http::header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim)
        .any(|v| v == b"*" || v.eq_ignore_ascii_case(b"accept-encoding"));
    if !vary {
        resp.append_header(http::header::VARY, "Accept-Encoding")?;
    }
    let Some(coding) = coding else {
        return Ok(());
    };
    resp.insert_header(http::header::CONTENT_ENCODING, coding.token())?;
    resp.remove_header(&http::header::CONTENT_LENGTH);
    // chunked, so the connection stays open (HTTP/2 writers drop the field; an HTTP/1.0
    // client's edit turns it into a close-delimited body)
    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    resp.remove_header(&http::header::ACCEPT_RANGES);
    if let Some(etag) = resp.headers.get(http::header::ETAG) {
        if etag.as_bytes().first() == Some(&b'"') {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            let weak = http::HeaderValue::from_bytes(&weak).map_err(|_| {
                pingora_error::Error::explain(pingora_error::ErrorType::InternalError, "etag")
            })?;
            resp.insert_header(http::header::ETAG, weak)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compression::{MediaPattern, DEFAULT_MIN_SIZE};

    fn spec() -> CompressionSpec {
        CompressionSpec {
            algorithms: vec![(Coding::Br, 4), (Coding::Zstd, 3), (Coding::Gzip, 6)],
            min_size: DEFAULT_MIN_SIZE,
            content_types: vec![
                MediaPattern::AnySubtype("text".into()),
                MediaPattern::Exact("application/json".into()),
            ],
        }
    }

    fn pick(ae: &str) -> Option<&'static str> {
        choose(&spec(), &[ae.as_bytes()]).map(|(c, _)| c.token())
    }

    #[test]
    fn q_values_then_route_order() {
        assert_eq!(pick("gzip, deflate, br"), Some("br"));
        assert_eq!(pick("gzip;q=1.0, br;q=0.8"), Some("gzip"));
        assert_eq!(pick("gzip;q=0.5, zstd;q=0.5"), Some("zstd"));
        assert_eq!(pick("*"), Some("br"));
        assert_eq!(pick("*;q=0.3, gzip"), Some("gzip"));
        assert_eq!(pick("br;q=0, gzip;q=0"), None);
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("gzip;q=0.5, identity"), None);
        assert_eq!(pick("deflate"), None);
        assert_eq!(pick("gzip;q=2"), None);
        assert_eq!(pick("GZIP ; Q=0.9"), Some("gzip"));
        assert_eq!(choose(&spec(), &[]), None);
    }

    fn resp(fields: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).expect("head");
        for (k, v) in fields {
            r.append_header(k.to_string(), *v).expect("field");
        }
        r
    }

    #[test]
    fn what_is_never_compressed() {
        let s = spec();
        let text = [("Content-Type", "text/html; charset=utf-8")];
        assert!(candidate(&s, &resp(&text)));
        assert!(candidate(
            &s,
            &resp(&[("Content-Type", "Application/JSON")])
        ));
        assert!(!candidate(&s, &resp(&[("Content-Type", "image/png")])));
        assert!(!candidate(&s, &resp(&[])));
        let mut r = resp(&text);
        r.append_header("Content-Encoding", "gzip").expect("f");
        assert!(!candidate(&s, &r));
        let mut r = resp(&text);
        r.append_header("Cache-Control", "public, No-Transform")
            .expect("f");
        assert!(!candidate(&s, &r));
        let mut r = resp(&text);
        r.append_header("Content-Length", "255").expect("f");
        assert!(!candidate(&s, &r));
        let mut r = resp(&text);
        r.set_status(304).expect("status");
        assert!(!candidate(&s, &r));
        let ae: [&[u8]; 1] = [b"gzip"];
        let head = Request {
            head: true,
            range: false,
            accept_encoding: &ae,
        };
        assert_eq!(decide(Some(&s), &head, &resp(&text)), Some(None));
        let get = Request {
            head: false,
            range: false,
            accept_encoding: &ae,
        };
        assert_eq!(
            decide(Some(&s), &get, &resp(&text)).flatten().map(|c| c.0),
            Some(Coding::Gzip)
        );
        assert_eq!(decide(None, &get, &resp(&text)), None);
    }

    #[test]
    fn the_head_of_a_compressed_response() {
        let mut r = resp(&[
            ("Content-Type", "text/plain"),
            ("Content-Length", "1000"),
            ("Vary", "Origin"),
            ("ETag", "\"v1\""),
            ("Accept-Ranges", "bytes"),
        ]);
        edit(&mut r, Some(Coding::Br)).expect("edit");
        let h = &r.headers;
        assert_eq!(
            h.get("content-encoding").map(|v| v.as_bytes()),
            Some(&b"br"[..])
        );
        assert!(h.get("content-length").is_none() && h.get("accept-ranges").is_none());
        assert_eq!(
            h.get("transfer-encoding").map(|v| v.as_bytes()),
            Some(&b"chunked"[..])
        );
        assert_eq!(h.get("etag").map(|v| v.as_bytes()), Some(&b"W/\"v1\""[..]));
        let vary: Vec<&[u8]> = h.get_all("vary").iter().map(|v| v.as_bytes()).collect();
        assert_eq!(vary, [&b"Origin"[..], &b"Accept-Encoding"[..]]);
        // identity: only Vary, once
        let mut r = resp(&[("Content-Type", "text/plain"), ("Vary", "accept-encoding")]);
        edit(&mut r, None).expect("edit");
        assert_eq!(r.headers.get_all("vary").iter().count(), 1);
        assert!(r.headers.get("content-encoding").is_none());
    }
}
