//! A backend's response head, parsed and rewritten for the client by the policy's field
//! rules ([`crate::policy::fields`]).

use super::exchange::{Down, Failure};
use super::MAX_HEADERS;
use crate::policy::answer::{connection_line, Failure as Why};
use crate::policy::fields::{self, Field};
use pingora_http::ResponseHeader;
use std::mem::MaybeUninit;

/// How the response body ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes.
    Close,
}

/// What the response head said, taken out of the parse.
pub struct RespHead {
    pub code: u16,
    /// The head for an HTTP/1 client, as bytes.
    pub head: Vec<u8>,
    /// The head for an HTTP/2 client.
    pub h2: Option<Box<ResponseHeader>>,
    pub head_len: usize,
    pub framing: Framing,
    pub upstream_keep: bool,
    pub client_keep: bool,
    /// A close-delimited body sent to the HTTP/1.1 client chunked, so its connection stays
    /// open (as Pingora's path does).
    pub rechunk: bool,
    /// A chunked body sent to an HTTP/1.0 client decoded, close-delimited.
    pub dechunk: bool,
    /// A 101 to a WebSocket handshake.
    pub upgraded: bool,
}

pub enum Parsed {
    Partial,
    /// A 1xx other than 101: its length and status.
    Informational(usize, u16),
    Head(RespHead),
}

/// Parse a response head and write the client's version of it.
pub fn parse_response(rbuf: &[u8], head_only: bool, down: Down) -> Result<Parsed, Failure> {
    let (want_keep, upgrade, http10) = match down {
        Down::H1 {
            want_keep,
            upgrade,
            http10,
        } => (want_keep, upgrade, http10),
        Down::H2 => (false, false, false),
    };
    let mut hdrs = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let n = match super::parse::response(&mut resp, rbuf, &mut hdrs) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => {
            return Err(Failure::Answer(
                Why::BadResponse,
                format!("malformed response head: {e}"),
            ))
        }
    };
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Err(Failure::Answer(
            Why::BadResponse,
            "malformed response head".into(),
        ));
    };
    if let Some(why) = crate::policy::answer::backend_status_refused(code, upgrade) {
        return Err(Failure::Answer(Why::BadResponse, why));
    };
    if code == 101 && upgrade {
        // The handshake's answer goes through as it is (Connection and Upgrade included);
        // the connection is a tunnel from here on.
        let mut head = Vec::with_capacity(n + 64);
        head.extend_from_slice(b"HTTP/1.1 101 ");
        head.extend_from_slice(resp.reason.unwrap_or("Switching Protocols").as_bytes());
        head.extend_from_slice(b"\r\n");
        for h in resp.headers.iter() {
            if fields::classify(h.name.as_bytes()) == Field::HopByHop {
                continue;
            }
            head.extend_from_slice(h.name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(h.value);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        return Ok(Parsed::Head(RespHead {
            code,
            head,
            h2: None,
            head_len: n,
            framing: Framing::None,
            upstream_keep: false,
            client_keep: false,
            rechunk: false,
            dechunk: false,
            upgraded: true,
        }));
    }
    if (100..200).contains(&code) {
        return Ok(Parsed::Informational(n, code));
    }
    let mut length: Option<u64> = None;
    let mut te = false;
    let mut codings = fields::Codings::default();
    let mut up_close = version == 0;
    let mut nominated = false;
    // each name classified once: the framing pass here, the copy passes below
    let mut kinds = [Field::Other; MAX_HEADERS];
    for (h, kind) in resp.headers.iter().zip(kinds.iter_mut()) {
        *kind = fields::classify_response(h.name.as_bytes());
        match *kind {
            Field::ContentLength => match fields::parse_len_list(h.value) {
                Some(v) if length.is_none_or(|l| l == v) => length = Some(v),
                _ => {
                    return Err(Failure::Answer(
                        Why::BadResponse,
                        "bad Content-Length in response".into(),
                    ))
                }
            },
            Field::Connection => {
                for t in fields::tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        up_close = true;
                        // a field called `close` is named too (RFC 9110 §7.6.1)
                        nominated = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        if version == 0 {
                            up_close = false;
                        }
                    } else {
                        nominated = true;
                    }
                }
            }
            Field::TransferEncoding => {
                te = true;
                codings.add(h.value);
            }
            _ => {}
        }
    }
    let chunked = codings
        .chunked()
        .map_err(|why| Failure::Answer(Why::BadResponse, why.into()))?;
    let framing = if head_only || code == 204 || code == 304 {
        Framing::None
    } else if te {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    // An HTTP/1.1 client gets a close-delimited body chunked: its connection stays usable.
    // An HTTP/1.0 one takes no chunked body: it gets the data until the connection closes.
    let rechunk = down != Down::H2 && !http10 && framing == Framing::Close;
    let dechunk = http10 && framing == Framing::Chunked;
    let client_keep =
        want_keep && !(http10 && matches!(framing, Framing::Chunked | Framing::Close));
    let upstream_keep = !up_close && framing != Framing::Close;

    if down == Down::H2 {
        // Pingora's HTTP/2 writer adds Date and drops the connection-specific fields. The
        // head is built as `http` parts and converted whole: Pingora's `append_header` would
        // parse every name a second time, and a case map is not needed (HTTP/2 names are
        // lowercase on the wire).
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = http::StatusCode::from_u16(code)
            .map_err(|e| Failure::Answer(Why::BadResponse, format!("response head: {e}")))?;
        parts.headers.reserve(resp.headers.len());
        for (h, kind) in resp.headers.iter().zip(kinds) {
            let name = h.name.as_bytes();
            match kind {
                Field::Connection | Field::HopByHop => continue,
                Field::ContentLength => continue,
                Field::Upgrade => continue,
                Field::TransferEncoding => continue,
                // kept: HTTP/3's writer keeps it (`policy::edit::date_if_missing`); Pingora's
                // HTTP/2 writer puts its own in its place
                _ => {}
            }
            if nominated && fields::nomination_drops(kind) && nominated_by(resp.headers, name) {
                continue;
            }
            let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(h.value),
            ) else {
                return Err(Failure::Answer(
                    Why::BadResponse,
                    "response header not valid for HTTP/2".into(),
                ));
            };
            if parts.headers.try_append(k, v).is_err() {
                return Err(Failure::Answer(
                    Why::BadResponse,
                    "too many response header fields".into(),
                ));
            }
        }
        if let (Some(n), false) = (length, te) {
            let _ = parts
                .headers
                .try_append(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
        }
        let r = ResponseHeader::from(parts);
        return Ok(Parsed::Head(RespHead {
            code,
            head: Vec::new(),
            h2: Some(Box::new(r)),
            head_len: n,
            framing,
            upstream_keep,
            client_keep: false,
            rechunk: false,
            dechunk: false,
            upgraded: false,
        }));
    }
    let h2 = None;
    // room for the first body bytes too; at least one size the allocator keeps per thread
    let mut head = Vec::with_capacity((n + 64 + 4096).max(8192));
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    head.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (h, kind) in resp.headers.iter().zip(kinds) {
        let name = h.name.as_bytes();
        match kind {
            Field::Connection | Field::HopByHop => continue,
            // written once below, normalised (RFC 9110 8.6)
            Field::ContentLength => continue,
            Field::Upgrade => continue,
            // HTTP/1.0 has no transfer codings (a HEAD's answer included)
            Field::TransferEncoding if http10 => continue,
            _ => {}
        }
        if nominated && fields::nomination_drops(kind) && nominated_by(resp.headers, name) {
            continue;
        }
        has_date |= kind == Field::Date;
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    if let (Some(n), false) = (length, te) {
        head.extend_from_slice(b"content-length: ");
        crate::policy::forwarded::push_u64(&mut head, n);
        head.extend_from_slice(b"\r\n");
    }
    if !has_date {
        head.extend_from_slice(b"date: ");
        crate::policy::date::now(&mut head);
        head.extend_from_slice(b"\r\n");
    }
    if rechunk {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(connection_line(client_keep));
    head.extend_from_slice(b"\r\n");
    Ok(Parsed::Head(RespHead {
        code,
        head,
        h2,
        head_len: n,
        framing,
        upstream_keep,
        client_keep,
        rechunk,
        dechunk,
        upgraded: false,
    }))
}

/// Whether a `Connection` field of the response names `name` (hop-by-hop for this message).
fn nominated_by(headers: &[httparse::Header], name: &[u8]) -> bool {
    fields::nominated(
        headers
            .iter()
            .filter(|c| fields::classify(c.name.as_bytes()) == Field::Connection)
            .map(|c| c.value),
        name,
    )
}

/// What [`fuzz_response`] found: a fuzzing hook's answer, not an API.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub struct FuzzHead {
    pub head_len: usize,
    pub code: u16,
    /// A 1xx other than an accepted 101: passed on, and the real head follows.
    pub informational: bool,
    pub upgraded: bool,
    /// "none", "length", "chunked" or "close", and the length for "length".
    pub framing: (&'static str, u64),
    pub rechunk: bool,
    pub upstream_keep: bool,
    pub client_keep: bool,
    /// The head written for an HTTP/1 client.
    pub h1: Vec<u8>,
    /// The fields of the head for an HTTP/2 client: lowercase names, and values.
    pub h2: Vec<(String, Vec<u8>)>,
}

/// Fuzzing hook, not an API: parse `bytes` as a backend's response head the way the lean
/// engine does, for an HTTP/1 client (`h2` false: `want_keep` and `upgrade` are that
/// client's) or an HTTP/2 one. `Ok(None)`: the head is not complete yet. `Err`: the reason
/// the response is refused (a 502 for the client).
#[doc(hidden)]
pub fn fuzz_response(
    bytes: &[u8],
    head_only: bool,
    h2: bool,
    want_keep: bool,
    upgrade: bool,
) -> Result<Option<FuzzHead>, String> {
    let down = if h2 {
        Down::H2
    } else {
        Down::H1 {
            want_keep,
            upgrade,
            http10: false,
        }
    };
    let h = match parse_response(bytes, head_only, down) {
        Ok(Parsed::Partial) => return Ok(None),
        Ok(Parsed::Informational(n, code)) => {
            return Ok(Some(FuzzHead {
                head_len: n,
                code,
                informational: true,
                upgraded: false,
                framing: ("none", 0),
                rechunk: false,
                upstream_keep: true,
                client_keep: want_keep,
                h1: Vec::new(),
                h2: Vec::new(),
            }))
        }
        Ok(Parsed::Head(h)) => h,
        Err(Failure::Answer(_, why)) => return Err(why),
        Err(Failure::Cut) => return Err("cut".into()),
    };
    let framing = match h.framing {
        Framing::None => ("none", 0),
        Framing::Length(n) => ("length", n),
        Framing::Chunked => ("chunked", 0),
        Framing::Close => ("close", 0),
    };
    let fields = h.h2.map_or_else(Vec::new, |r| {
        r.headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    });
    Ok(Some(FuzzHead {
        head_len: h.head_len,
        code: h.code,
        informational: false,
        upgraded: h.upgraded,
        framing,
        rechunk: h.rechunk,
        upstream_keep: h.upstream_keep,
        client_keep: h.client_keep,
        h1: h.head,
        h2: fields,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h1_head(raw: &[u8]) -> Vec<u8> {
        let down = Down::H1 {
            want_keep: true,
            upgrade: false,
            http10: false,
        };
        match parse_response(raw, false, down) {
            Ok(Parsed::Head(h)) => h.head,
            _ => panic!("no head parsed from {:?}", String::from_utf8_lossy(raw)),
        }
    }

    /// Each kept field is written `name: value`, CRLF, however the backend spaced it or
    /// ended its line.
    #[test]
    fn fields_are_written_as_name_colon_space_value_whatever_the_spacing() {
        let tail = |fields: &str| {
            let mut v = b"HTTP/1.1 200 OK\r\n".to_vec();
            v.extend_from_slice(fields.as_bytes());
            v.extend_from_slice(b"content-length: 3\r\n");
            v.extend_from_slice(connection_line(true));
            v.extend_from_slice(b"\r\n");
            v
        };
        let want = tail("Server: s\r\nX-A: a\r\nX-B: b\r\nX-C: c\r\nDate: d\r\nX-Empty: \r\n");
        for raw in [
            // every line as it is written
            concat!(
                "HTTP/1.1 200 OK\r\nServer: s\r\nX-A: a\r\nX-B: b\r\nX-C: c\r\n",
                "Date: d\r\nX-Empty: \r\nContent-Length: 3\r\n\r\n",
            ),
            // fields dropped among them
            concat!(
                "HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive\r\nX-A: a\r\n",
                "Keep-Alive: timeout=5\r\nX-B: b\r\nContent-Length: 3\r\nX-C: c\r\n",
                "Date: d\r\nX-Empty: \r\n\r\n",
            ),
            // other spacing
            concat!(
                "HTTP/1.1 200 OK\r\nServer: s\r\nX-A:a\r\nX-B:   b  \r\nX-C:\tc\r\n",
                "Date: d\r\nX-Empty:\r\nContent-Length: 3\r\n\r\n",
            ),
            // bare LF line ends
            concat!(
                "HTTP/1.1 200 OK\nServer: s\nX-A: a\r\nX-B: b\nX-C: c\r\nDate: d\n",
                "X-Empty: \nContent-Length: 3\n\n",
            ),
        ] {
            let got = h1_head(raw.as_bytes());
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "for {raw:?}"
            );
        }
    }
}
