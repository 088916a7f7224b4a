//! Header fields as the proxy sees them: which carry framing, which are hop-by-hop, which
//! the proxy writes itself. One table for every engine, in both directions.

/// What a header field means to the proxy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Field {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Hop-by-hop fields that never cross the proxy (RFC 9110 §7.6.1, plus the legacy
    /// `Keep-Alive` and `Proxy-Connection`, and the proxy-authentication pair, which belong
    /// to the hop they were sent on).
    HopByHop,
    Upgrade,
    Expect,
    Http2Settings,
    /// Decremented on TRACE and OPTIONS ([`max_forwards`]).
    MaxForwards,
    XForwardedFor,
    /// X-Forwarded-Proto and X-Forwarded-Host: replaced by the proxy's own.
    XForwardedSet,
    Cookie,
    Referer,
    UserAgent,
    Date,
    /// A name with `_`: some backends fold it into `-`, so `Transfer_Encoding` would reframe
    /// the body behind the proxy's back. Dropped from requests, as nginx does by default
    /// (`underscores_in_headers off`).
    Underscored,
    /// Fields that keep a request from being answered as a fresh cache hit without the
    /// cache's full machinery: conditionals, ranges, request cache directives, credentials.
    NotForHit,
    Other,
}

mod name;
pub use name::{classify, classify_framing, classify_response};

/// The comma-separated tokens of a field value, trimmed, empty ones skipped.
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// A Content-Length value: digits only, no sign, no list (a list is refused by the head
/// checks before any engine sees it).
pub fn parse_len(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    // Folded here: `str::from_utf8` and `parse` cost about 130 instructions for a
    // four-digit length. At most 19 digits stay below 10^19 < 2^64, so nothing overflows.
    v.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// A Content-Length value that may be a list of one repeated length (`5, 5`), as RFC 9110
/// §8.6 lets a recipient accept; the proxy then sends the one value. Differing values, signs
/// or empty elements: `None`.
pub fn parse_len_list(v: &[u8]) -> Option<u64> {
    let mut out = None;
    for part in v.split(|&b| b == b',') {
        let n = parse_len(part)?;
        if out.is_some_and(|o| o != n) {
            return None;
        }
        out = Some(n);
    }
    out
}

/// What a message's `Connection` fields say.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Other tokens: field names that are hop-by-hop for this message (RFC 9110 §7.6.1).
    pub nominates: bool,
}

/// Whether a request's `Connection` fields, all of them, ask to close the connection (RFC
/// 9112 §9.6): `close` in any of them, however many there are. Both engines decide keep-alive
/// on this; Pingora's own reading takes the first field only.
pub fn asks_close<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let mut c = ConnectionOptions::default();
    for v in values {
        c.add(v);
    }
    c.close
}

impl ConnectionOptions {
    /// Whether a field called `name` is named by these options, so hop-by-hop (RFC 9110
    /// §7.6.1), for a message whose other nominations ([`Self::nominates`]) are handled
    /// elsewhere: a field called `close` beside `Connection: close`. `keep-alive` and
    /// `upgrade` name fields that are hop-by-hop anyway.
    pub fn names(&self, name: &str) -> bool {
        self.close && name.eq_ignore_ascii_case("close")
    }

    pub fn add(&mut self, value: &[u8]) {
        for t in tokens(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.nominates = true;
            }
        }
    }
}

/// Whether an `Upgrade` value names protocols the proxy relays end to end: any but `h2c`,
/// which is an upgrade of this hop only (an HTTP/2 connection to the proxy itself).
pub fn upgrade_relayable(value: &[u8]) -> bool {
    let mut any = false;
    for t in tokens(value) {
        if t.eq_ignore_ascii_case(b"h2c") {
            return false;
        }
        any = true;
    }
    any
}

/// Whether a request asks for an upgrade the proxy relays: a bodiless GET naming `upgrade`
/// in `Connection` and relayable protocols in `Upgrade` (WebSocket and others alike). After
/// a 101 the connection becomes a tunnel. Any other use of `Upgrade` is dropped.
pub fn upgrade_relayed(
    get: bool,
    connection_upgrade: bool,
    upgrade: Option<&[u8]>,
    body: bool,
) -> bool {
    get && connection_upgrade && !body && upgrade.is_some_and(upgrade_relayable)
}

/// What an intermediary does with a request's `Max-Forwards` (RFC 9110 §7.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxForwards {
    /// Forward the request as it is: not TRACE or OPTIONS, or no valid `Max-Forwards`.
    Pass,
    /// Forward it with `Max-Forwards` set to this (the received value less one).
    Forward(u64),
    /// The count is spent: the proxy answers as the final recipient, forwarding nothing.
    Answer,
}

/// Whether a request's method is one `Max-Forwards` applies to.
pub fn max_forwards_applies(method: &[u8]) -> bool {
    method == b"OPTIONS" || method == b"TRACE"
}

/// The `Max-Forwards` step for a request with `method` and these field values (the first
/// valid one counts; a value that is not a number is ignored, as if absent).
pub fn max_forwards<'a>(method: &[u8], values: impl IntoIterator<Item = &'a [u8]>) -> MaxForwards {
    if !max_forwards_applies(method) {
        return MaxForwards::Pass;
    }
    match values.into_iter().find_map(parse_len) {
        None => MaxForwards::Pass,
        Some(0) => MaxForwards::Answer,
        Some(n) => MaxForwards::Forward(n - 1),
    }
}

/// Whether `name` is nominated by one of the `Connection` field values.
pub fn nominated<'a>(mut connection: impl Iterator<Item = &'a [u8]>, name: &[u8]) -> bool {
    connection.any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(name)))
}

/// Whether a request field is left out of the request sent upstream. The proxy writes its
/// own X-Forwarded-* (see [`super::forwarded`]), framing and, for upgrades, `Connection`.
/// Fields nominated by `Connection` are dropped too, by the caller, with [`nominated`].
pub fn drop_on_request(f: Field) -> bool {
    matches!(
        f,
        Field::HopByHop
            | Field::Connection
            | Field::Upgrade
            | Field::Http2Settings
            | Field::XForwardedFor
            | Field::XForwardedSet
            | Field::Underscored
    )
}

/// The transfer codings of a response, over all its `Transfer-Encoding` fields in order.
#[derive(Default)]
pub struct Codings {
    chunked: usize,
    last_chunked: bool,
}

impl Codings {
    pub fn add(&mut self, v: &[u8]) {
        for t in tokens(v) {
            let c = t.eq_ignore_ascii_case(b"chunked");
            self.chunked += usize::from(c);
            self.last_chunked = c;
        }
    }

    /// Whether the body is chunked; without chunked it runs until the backend closes (RFC
    /// 9112 §6.3). `Err`: chunked listed twice, or before another coding. The proxy would
    /// pass that body on inside a chunked coding of its own (or, listed twice, pass the
    /// claim on), and chunked is never applied twice to a message (RFC 9112 §7). A backend
    /// that sends it is broken; the answer is a 502, as nginx gives for any coding but
    /// chunked.
    pub fn chunked(&self) -> Result<bool, &'static str> {
        match (self.chunked, self.last_chunked) {
            (0, _) => Ok(false),
            (1, true) => Ok(true),
            _ => Err(
                "chunked listed twice or before another coding in the response's Transfer-Encoding",
            ),
        }
    }
}

/// Whether a response field that the backend's `Connection` nominates is left out. Not the
/// framing fields: they say how the body the proxy relays is delimited, and the proxy writes
/// (Content-Length) or passes on (a chunked body, as it came) that body itself. Dropping
/// Transfer-Encoding from a chunked body passed on as it came would leave the client with
/// neither length nor coding, reading chunk sizes as data until the connection closes.
pub fn nomination_drops(f: Field) -> bool {
    !matches!(f, Field::ContentLength | Field::TransferEncoding)
}

/// Whether a response field is left out of the response sent to the client. `chunked`: the
/// response is chunked, so a Content-Length beside it is a lie (RFC 9112 §6.3).
pub fn drop_on_response(f: Field, chunked: bool) -> bool {
    match f {
        Field::HopByHop | Field::Connection | Field::Upgrade => true,
        Field::ContentLength => chunked,
        _ => false,
    }
}

/// Names every engine looks up by name on each request. A `&str` key is parsed into a
/// header name again on every lookup; these are parsed once.
pub static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Names of the response fields dropped whatever their position; for engines that edit a
/// header map by name (Pingora's phases, HTTP/2).
pub const RESPONSE_HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Names of request fields the proxy never forwards as they came (see [`drop_on_request`]).
pub const REQUEST_DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_codings_of_a_response() {
        let of = |vals: &[&str]| {
            let mut c = Codings::default();
            for v in vals {
                c.add(v.as_bytes());
            }
            c.chunked()
        };
        assert_eq!(of(&[]), Ok(false));
        assert_eq!(of(&["chunked"]), Ok(true));
        assert_eq!(of(&["gzip, Chunked"]), Ok(true));
        assert_eq!(of(&["gzip", "chunked"]), Ok(true), "over fields, in order");
        assert_eq!(of(&["gzip"]), Ok(false), "close-delimited");
        assert!(of(&["chunked, gzip"]).is_err(), "not last");
        assert!(of(&["chunked", "gzip"]).is_err(), "not last, over fields");
        assert!(of(&["chunked", "chunked"]).is_err(), "twice");
        assert!(of(&["chunked,chunked"]).is_err(), "twice in one field");
    }

    #[test]
    fn nomination_keeps_the_framing_fields() {
        assert!(!nomination_drops(classify(b"Transfer-Encoding")));
        assert!(!nomination_drops(classify(b"content-length")));
        assert!(nomination_drops(classify(b"x-private")));
        assert!(nomination_drops(classify(b"date")));
    }

    #[test]
    fn name_lists_agree_with_the_classifier() {
        for n in RESPONSE_HOP_BY_HOP {
            assert!(drop_on_response(classify(n.as_bytes()), false), "{n}");
        }
        for n in REQUEST_DROPPED {
            assert!(drop_on_request(classify(n.as_bytes())), "{n}");
        }
        assert!(!drop_on_request(classify(b"Cookie")));
        assert!(drop_on_request(classify(b"Transfer_Encoding")));
        assert!(drop_on_request(classify(b"x_user")));
        assert!(!drop_on_response(classify(b"x_user"), false));
        assert!(!drop_on_response(classify(b"Set-Cookie"), true));
        assert!(drop_on_response(classify(b"Content-Length"), true));
        assert!(!drop_on_response(classify(b"Content-Length"), false));
    }

    #[test]
    fn max_forwards_counts_down_on_trace_and_options_only() {
        let v = |s: &'static str| [s.as_bytes()];
        assert_eq!(max_forwards(b"OPTIONS", v("0")), MaxForwards::Answer);
        assert_eq!(max_forwards(b"TRACE", v(" 3 ")), MaxForwards::Forward(2));
        assert_eq!(max_forwards(b"GET", v("0")), MaxForwards::Pass);
        assert_eq!(max_forwards(b"OPTIONS", v("-1")), MaxForwards::Pass);
        assert_eq!(max_forwards(b"OPTIONS", v("x, 0")), MaxForwards::Pass);
        assert_eq!(max_forwards(b"OPTIONS", []), MaxForwards::Pass);
        let two: [&[u8]; 2] = [b"x", b"1"];
        assert_eq!(max_forwards(b"OPTIONS", two), MaxForwards::Forward(0));
    }

    /// Every name of the table, in any casing, and names near them, classify as the plain
    /// case-insensitive comparison says.
    #[test]
    fn classify_is_case_insensitive_and_exact() {
        let table: &[(&str, Field)] = &[
            ("te", Field::HopByHop),
            ("host", Field::Host),
            ("date", Field::Date),
            ("range", Field::NotForHit),
            ("cookie", Field::Cookie),
            ("expect", Field::Expect),
            ("pragma", Field::NotForHit),
            ("referer", Field::Referer),
            ("upgrade", Field::Upgrade),
            ("trailer", Field::HopByHop),
            ("if-match", Field::NotForHit),
            ("if-range", Field::NotForHit),
            ("connection", Field::Connection),
            ("keep-alive", Field::HopByHop),
            ("user-agent", Field::UserAgent),
            ("max-forwards", Field::MaxForwards),
            ("cache-control", Field::NotForHit),
            ("if-none-match", Field::NotForHit),
            ("authorization", Field::NotForHit),
            ("content-length", Field::ContentLength),
            ("http2-settings", Field::Http2Settings),
            ("x-forwarded-for", Field::XForwardedFor),
            ("proxy-connection", Field::HopByHop),
            ("x-forwarded-host", Field::XForwardedSet),
            ("transfer-encoding", Field::TransferEncoding),
            ("x-forwarded-proto", Field::XForwardedSet),
            ("if-modified-since", Field::NotForHit),
            ("proxy-authenticate", Field::HopByHop),
            ("proxy-authorization", Field::HopByHop),
            ("if-unmodified-since", Field::NotForHit),
        ];
        for &(n, f) in table {
            assert_eq!(classify(n.as_bytes()), f, "{n}");
            assert_eq!(classify(n.to_ascii_uppercase().as_bytes()), f, "{n}");
            let mixed: String = n
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            assert_eq!(classify(mixed.as_bytes()), f, "{mixed}");
            // one byte more, one less, one changed: not the field
            let longer = format!("{n}x");
            assert!(
                matches!(classify(longer.as_bytes()), Field::Other),
                "{longer}"
            );
            assert!(matches!(classify(&n.as_bytes()[1..]), Field::Other), "{n}");
            let mut changed = n.as_bytes().to_vec();
            changed[0] ^= 0x01;
            assert_eq!(classify(&changed), Field::Other, "{n}");
            // case folding is for letters only: a `-` or digit with its 0x20 bit flipped
            // (a control character, or `\r` for `-`) is another name
            for (i, b) in n.bytes().enumerate() {
                if !b.is_ascii_alphabetic() {
                    let mut other = n.as_bytes().to_vec();
                    other[i] ^= 0x20;
                    assert_eq!(classify(&other), Field::Other, "{n} at {i}");
                }
            }
        }
        assert_eq!(classify(b"x_forwarded_for"), Field::Underscored);
        assert_eq!(
            classify(b"a_very_long_field_name_over_19"),
            Field::Underscored
        );
        assert_eq!(classify(b"a-very-long-field-name-over-19"), Field::Other);
        assert_eq!(classify(b""), Field::Other);
        assert_eq!(classify(b"Content-Type"), Field::Other);
    }

    #[test]
    fn connection_tokens() {
        let mut c = ConnectionOptions::default();
        c.add(b"keep-alive, X-Trace , ,Upgrade");
        assert!(c.keep_alive && c.upgrade && c.nominates && !c.close);
        let vals: [&[u8]; 2] = [b"close", b"x-a, X-B"];
        assert!(nominated(vals.iter().copied(), b"x-b"));
        let mut close = ConnectionOptions::default();
        assert!(!close.names("close"));
        close.add(b"Close");
        assert!(close.names("CLOSE") && !close.names("x-b") && !close.nominates);
        assert!(!nominated(vals.iter().copied(), b"x-c"));
        let two: [&[u8]; 2] = [b"keep-alive", b" Close"];
        assert!(asks_close(two) && !asks_close([&b"keep-alive, x-close"[..]]));
    }

    #[test]
    fn length_lists() {
        assert_eq!(parse_len_list(b"5, 5"), Some(5));
        assert_eq!(parse_len_list(b"05"), Some(5));
        assert_eq!(parse_len_list(b"5, 6"), None);
        assert_eq!(parse_len_list(b"5,"), None);
    }

    #[test]
    fn lengths() {
        assert_eq!(parse_len(b" 42 "), Some(42));
        assert_eq!(parse_len(b"+1"), None);
        assert_eq!(parse_len(b"1,1"), None);
        assert_eq!(parse_len(b""), None);
        assert_eq!(parse_len(b"99999999999999999999"), None);
        // the longest taken: 19 digits, the largest still below 2^64
        assert_eq!(
            parse_len(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_len(b"0000000000000000007"), Some(7));
        for bad in [
            &b"1 2"[..],
            b"-1",
            b"0x10",
            b"1e3",
            b"\xd9\xa1",
            b"12a",
            b"1.0",
        ] {
            assert_eq!(parse_len(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // as `str::parse` reads the digits it takes, for lengths of every size
        let mut rng = crate::testkit::Rng(17);
        for _ in 0..2000 {
            let digits = 1 + rng.below(19);
            let s: String = (0..digits)
                .map(|_| char::from(b'0' + rng.below(10) as u8))
                .collect();
            assert_eq!(parse_len(s.as_bytes()), s.parse::<u64>().ok(), "{s}");
        }
    }
}
