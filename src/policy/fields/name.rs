//! Field names classified a word at a time.
//!
//! Every field of every request and response is classified (about ten per proxied GET), and
//! the byte-by-byte case-insensitive compare against each name of the same length cost 810
//! instructions per request for an eight-field response (callgrind, GET 1 KiB): names such
//! as `Last-Modified` and `Accept-Ranges` share their length with three names the proxy
//! knows. Here a name of up to [`MAX`] bytes is read as at most three 8-byte words (the
//! first, the last and, past 16 bytes, the middle one; they overlap for lengths that are not
//! a multiple of 8), each lower-cased in one go, and every known name of that length is then
//! one compare per word. Longer names are none of the known ones.

use super::Field;
use crate::policy::scan::{byte_marks, word, HIGHS, ONES};

/// The longest name the proxy knows (`proxy-authorization`, `if-unmodified-since`).
const MAX: usize = 19;

/// A name's words: `(first 8, last 8, middle 8)`, each present only as far as the name
/// reaches (a name under 8 bytes is one zero-padded word).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Words(u64, u64, u64);

/// A name under 8 bytes as one word, zero-padded: two overlapping 4-byte loads from 4 bytes
/// up (a copy of a variable length is a call to `memcpy`, which cost more than the rest).
#[inline(always)]
fn short(b: &[u8]) -> u64 {
    let n = b.len();
    debug_assert!(n < 8);
    let four = |at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[at..at + 4]);
        u64::from(u32::from_le_bytes(w))
    };
    match n {
        // the bytes the two loads share are the same in both, so OR-ing them keeps them
        4..=7 => four(0) | (four(n - 4) << (8 * (n - 4))),
        _ => b
            .iter()
            .enumerate()
            .fold(0, |w, (i, &c)| w | (u64::from(c) << (8 * i))),
    }
}

/// ASCII `A`-`Z` in each byte to `a`-`z`, every other byte as it is (the same mapping as
/// `u8::to_ascii_lowercase`, eight bytes at once).
#[inline(always)]
fn lower(x: u64) -> u64 {
    let low7 = x & !HIGHS;
    // the high bit of each byte: set where its low seven bits are >= 'A', and > 'Z'
    let from_a = low7 + ONES * u64::from(0x80 - b'A');
    let past_z = low7 + ONES * u64::from(0x80 - b'Z' - 1);
    let upper = from_a & !past_z & !x & HIGHS;
    x | (upper >> 2)
}

#[inline(always)]
fn words(name: &[u8]) -> Words {
    let n = name.len();
    if n < 8 {
        return Words(lower(short(name)), 0, 0);
    }
    let middle = if n > 16 { lower(word(&name[8..16])) } else { 0 };
    Words(lower(word(&name[..8])), lower(word(&name[n - 8..])), middle)
}

/// A known name's words, as [`words`] reads a name of its length (it is lower case).
const fn key(s: &[u8]) -> Words {
    const fn at(s: &[u8], from: usize, len: usize) -> u64 {
        let mut w = 0u64;
        let mut i = 0;
        while i < len {
            w |= (s[from + i] as u64) << (8 * i);
            i += 1;
        }
        w
    }
    let n = s.len();
    if n < 8 {
        return Words(at(s, 0, n), 0, 0);
    }
    let middle = if n > 16 { at(s, 8, 8) } else { 0 };
    Words(at(s, 0, 8), at(s, n - 8, 8), middle)
}

const TE: Words = key(b"te");
const HOST: Words = key(b"host");
const DATE: Words = key(b"date");
const RANGE: Words = key(b"range");
const COOKIE: Words = key(b"cookie");
const EXPECT: Words = key(b"expect");
const PRAGMA: Words = key(b"pragma");
const REFERER: Words = key(b"referer");
const UPGRADE: Words = key(b"upgrade");
const TRAILER: Words = key(b"trailer");
const IF_MATCH: Words = key(b"if-match");
const IF_RANGE: Words = key(b"if-range");
const CONNECTION: Words = key(b"connection");
const KEEP_ALIVE: Words = key(b"keep-alive");
const USER_AGENT: Words = key(b"user-agent");
const MAX_FORWARDS: Words = key(b"max-forwards");
const CACHE_CONTROL: Words = key(b"cache-control");
const IF_NONE_MATCH: Words = key(b"if-none-match");
const AUTHORIZATION: Words = key(b"authorization");
const CONTENT_LENGTH: Words = key(b"content-length");
const HTTP2_SETTINGS: Words = key(b"http2-settings");
const X_FORWARDED_FOR: Words = key(b"x-forwarded-for");
const PROXY_CONNECTION: Words = key(b"proxy-connection");
const X_FORWARDED_HOST: Words = key(b"x-forwarded-host");
const TRANSFER_ENCODING: Words = key(b"transfer-encoding");
const X_FORWARDED_PROTO: Words = key(b"x-forwarded-proto");
const IF_MODIFIED_SINCE: Words = key(b"if-modified-since");
const PROXY_AUTHENTICATE: Words = key(b"proxy-authenticate");
const PROXY_AUTHORIZATION: Words = key(b"proxy-authorization");
const IF_UNMODIFIED_SINCE: Words = key(b"if-unmodified-since");

/// Classify a field name, case-insensitively.
pub fn classify(name: &[u8]) -> Field {
    classify_as(name, true)
}

/// [`classify`] for a response's fields: a name with an underscore is [`Field::Other`], as
/// [`super::drop_on_response`] treats it; only a request's such names are refused or
/// dropped. The underscore scan was about a quarter of the classification of the usual
/// response field, which is none of the known names.
pub fn classify_response(name: &[u8]) -> Field {
    classify_as(name, false)
}

/// [`classify`] as far as a request head's guard needs it, [`Field::Other`] for the rest:
/// the framing fields, Host, Upgrade and Connection. A name of any other length is Other
/// without being read; one of those lengths is one compare. The guard's pass runs before
/// the engine's, which classifies each name fully: this keeps a field from costing twice.
pub fn classify_framing(name: &[u8]) -> Field {
    let (key, kind) = match name.len() {
        4 => (HOST, Field::Host),
        7 => (UPGRADE, Field::Upgrade),
        10 => (CONNECTION, Field::Connection),
        14 => (CONTENT_LENGTH, Field::ContentLength),
        17 => (TRANSFER_ENCODING, Field::TransferEncoding),
        _ => return Field::Other,
    };
    if words(name) == key {
        kind
    } else {
        Field::Other
    }
}

#[inline(always)]
fn classify_as(name: &[u8], underscores: bool) -> Field {
    let n = name.len();
    if n > MAX {
        return if underscores && name.contains(&b'_') {
            Field::Underscored
        } else {
            Field::Other
        };
    }
    let w = words(name);
    match n {
        2 if w == TE => Field::HopByHop,
        4 if w == HOST => Field::Host,
        4 if w == DATE => Field::Date,
        5 if w == RANGE => Field::NotForHit,
        6 if w == COOKIE => Field::Cookie,
        6 if w == EXPECT => Field::Expect,
        6 if w == PRAGMA => Field::NotForHit,
        7 if w == REFERER => Field::Referer,
        7 if w == UPGRADE => Field::Upgrade,
        7 if w == TRAILER => Field::HopByHop,
        8 if w == IF_MATCH || w == IF_RANGE => Field::NotForHit,
        10 if w == CONNECTION => Field::Connection,
        10 if w == KEEP_ALIVE => Field::HopByHop,
        10 if w == USER_AGENT => Field::UserAgent,
        12 if w == MAX_FORWARDS => Field::MaxForwards,
        13 if w == CACHE_CONTROL || w == IF_NONE_MATCH || w == AUTHORIZATION => Field::NotForHit,
        14 if w == CONTENT_LENGTH => Field::ContentLength,
        14 if w == HTTP2_SETTINGS => Field::Http2Settings,
        15 if w == X_FORWARDED_FOR => Field::XForwardedFor,
        16 if w == PROXY_CONNECTION => Field::HopByHop,
        16 if w == X_FORWARDED_HOST => Field::XForwardedSet,
        17 if w == TRANSFER_ENCODING => Field::TransferEncoding,
        17 if w == X_FORWARDED_PROTO => Field::XForwardedSet,
        17 if w == IF_MODIFIED_SINCE => Field::NotForHit,
        18 if w == PROXY_AUTHENTICATE => Field::HopByHop,
        19 if w == PROXY_AUTHORIZATION => Field::HopByHop,
        19 if w == IF_UNMODIFIED_SINCE => Field::NotForHit,
        // the words cover every byte ('_' is not a letter, so lowering keeps it), and the
        // zero padding of a short name is not '_'
        _ if underscores
            && (byte_marks(w.0, b'_') | byte_marks(w.1, b'_') | byte_marks(w.2, b'_')) != 0 =>
        {
            Field::Underscored
        }
        _ => Field::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte classifier this one replaced, kept as the reference.
    fn reference(name: &[u8]) -> Field {
        let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
        match name.len() {
            2 if is(b"te") => Field::HopByHop,
            4 if is(b"host") => Field::Host,
            4 if is(b"date") => Field::Date,
            5 if is(b"range") => Field::NotForHit,
            6 if is(b"cookie") => Field::Cookie,
            6 if is(b"expect") => Field::Expect,
            6 if is(b"pragma") => Field::NotForHit,
            7 if is(b"referer") => Field::Referer,
            7 if is(b"upgrade") => Field::Upgrade,
            7 if is(b"trailer") => Field::HopByHop,
            8 if is(b"if-match") || is(b"if-range") => Field::NotForHit,
            10 if is(b"connection") => Field::Connection,
            10 if is(b"keep-alive") => Field::HopByHop,
            10 if is(b"user-agent") => Field::UserAgent,
            12 if is(b"max-forwards") => Field::MaxForwards,
            13 if is(b"cache-control") || is(b"if-none-match") || is(b"authorization") => {
                Field::NotForHit
            }
            14 if is(b"content-length") => Field::ContentLength,
            14 if is(b"http2-settings") => Field::Http2Settings,
            15 if is(b"x-forwarded-for") => Field::XForwardedFor,
            16 if is(b"proxy-connection") => Field::HopByHop,
            16 if is(b"x-forwarded-host") => Field::XForwardedSet,
            17 if is(b"transfer-encoding") => Field::TransferEncoding,
            17 if is(b"x-forwarded-proto") => Field::XForwardedSet,
            17 if is(b"if-modified-since") => Field::NotForHit,
            18 if is(b"proxy-authenticate") => Field::HopByHop,
            19 if is(b"proxy-authorization") => Field::HopByHop,
            19 if is(b"if-unmodified-since") => Field::NotForHit,
            _ if name.contains(&b'_') => Field::Underscored,
            _ => Field::Other,
        }
    }

    const KNOWN: &[&str] = &[
        "te",
        "host",
        "date",
        "range",
        "cookie",
        "expect",
        "pragma",
        "referer",
        "upgrade",
        "trailer",
        "if-match",
        "if-range",
        "connection",
        "keep-alive",
        "user-agent",
        "max-forwards",
        "cache-control",
        "if-none-match",
        "authorization",
        "content-length",
        "http2-settings",
        "x-forwarded-for",
        "proxy-connection",
        "x-forwarded-host",
        "transfer-encoding",
        "x-forwarded-proto",
        "if-modified-since",
        "proxy-authenticate",
        "proxy-authorization",
        "if-unmodified-since",
    ];

    #[test]
    fn lowering_is_to_ascii_lowercase_on_every_byte() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut w = [b'q'; 8];
                w[at] = b;
                let mut want = w;
                want.make_ascii_lowercase();
                assert_eq!(
                    lower(u64::from_le_bytes(w)),
                    u64::from_le_bytes(want),
                    "{b:#x}"
                );
            }
        }
    }

    #[test]
    fn every_known_name_in_any_case_and_every_one_byte_change_agree_with_the_reference() {
        let mut checked = 0;
        for k in KNOWN {
            let k = k.as_bytes();
            assert_ne!(classify(k), Field::Other, "{}", String::from_utf8_lossy(k));
            // every case pattern of the first 8 letters, the rest upper and lower
            for mask in 0u32..256 {
                for rest_upper in [false, true] {
                    let v: Vec<u8> = k
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| {
                            let up = if i < 8 {
                                mask & (1 << i) != 0
                            } else {
                                rest_upper
                            };
                            if up {
                                c.to_ascii_uppercase()
                            } else {
                                c
                            }
                        })
                        .collect();
                    assert_eq!(classify(&v), reference(&v));
                    assert_eq!(classify(&v), classify(k));
                    checked += 1;
                }
            }
            // each byte replaced by each value: the case bit alone on '-' (a CR), a byte
            // off by 0x20 that is not a letter, '_', non-ASCII
            for i in 0..k.len() {
                for b in 0..=255u8 {
                    let mut v = k.to_vec();
                    v[i] = b;
                    assert_eq!(
                        classify(&v),
                        reference(&v),
                        "{}",
                        String::from_utf8_lossy(&v)
                    );
                    checked += 1;
                }
            }
            // one byte longer and shorter
            let mut longer = k.to_vec();
            longer.push(b'x');
            assert_eq!(classify(&longer), reference(&longer));
            assert_eq!(classify(&k[..k.len() - 1]), reference(&k[..k.len() - 1]));
        }
        assert!(checked > 100_000, "{checked}");
    }

    #[test]
    fn underscores_anywhere_at_every_length() {
        for n in 1..40 {
            for at in 0..n {
                let mut v = vec![b'a'; n];
                v[at] = b'_';
                assert_eq!(classify(&v), Field::Underscored, "{n} {at}");
            }
            assert_eq!(classify(&vec![b'A'; n]), Field::Other, "{n}");
        }
        assert_eq!(classify(b""), Field::Other);
        assert_eq!(classify(b"X-Real_IP"), Field::Underscored);
        assert_eq!(classify(b"Last-Modified"), Field::Other);
    }

    #[test]
    fn a_response_name_is_classified_as_a_request_name_but_an_underscore_is_other() {
        let as_response = |v: &[u8]| match classify(v) {
            Field::Underscored => Field::Other,
            f => f,
        };
        let mut underscored = 0;
        for k in KNOWN {
            for i in 0..k.len() {
                for b in 0..=255u8 {
                    let mut v = k.as_bytes().to_vec();
                    v[i] = b;
                    underscored += usize::from(classify(&v) == Field::Underscored);
                    assert_eq!(
                        classify_response(&v),
                        as_response(&v),
                        "{}",
                        String::from_utf8_lossy(&v)
                    );
                }
                assert_eq!(classify_response(k.as_bytes()), classify(k.as_bytes()));
            }
        }
        for n in 1..40 {
            let mut v = vec![b'a'; n];
            v[n / 2] = b'_';
            underscored += 1;
            assert_eq!(classify_response(&v), Field::Other, "{n}");
        }
        assert!(underscored > 300, "{underscored}");
    }

    #[test]
    fn the_guard_sees_its_five_fields_as_classify_does_and_nothing_else() {
        const GUARDED: [Field; 5] = [
            Field::Host,
            Field::Upgrade,
            Field::Connection,
            Field::ContentLength,
            Field::TransferEncoding,
        ];
        let as_guard = |v: &[u8]| match classify(v) {
            f if GUARDED.contains(&f) => f,
            _ => Field::Other,
        };
        let mut seen = [0usize; 5];
        for k in KNOWN {
            let k = k.as_bytes();
            let upper = k.to_ascii_uppercase();
            for v in [k, &upper[..], &k[1..]] {
                assert_eq!(classify_framing(v), as_guard(v));
            }
            for i in 0..k.len() {
                for b in 0..=255u8 {
                    let mut v = k.to_vec();
                    v[i] = b;
                    let f = classify_framing(&v);
                    assert_eq!(f, as_guard(&v), "{}", String::from_utf8_lossy(&v));
                    if let Some(at) = GUARDED.iter().position(|&g| g == f) {
                        seen[at] += 1;
                    }
                }
            }
        }
        // each of the five, in both cases of each letter of its name
        assert!(seen.iter().all(|&n| n >= 8), "{seen:?}");
    }
}
