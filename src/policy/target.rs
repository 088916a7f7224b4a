//! The request target as routes see it: the Host a request names must be one (RFC 9112
//! §3.2: a server answers 400 to an invalid Host), and the path is matched against
//! `path_prefix` as a backend will read it.
//!
//! A backend resolves `/x/../admin`, `/%61dmin` and `//admin` to `/admin` (RFC 3986 §6.2.2,
//! and most servers merge slashes), so routing on the raw bytes would let any of them past
//! a route's `methods` or `max_body_size` to the backend of another route. As nginx matches
//! locations, the path is first percent-decoded, then its slashes merged and its dot
//! segments resolved; a path that climbs above the root, a `%` not followed by two hex
//! digits and an encoded NUL are refused (400). The request itself goes to the backend as it
//! came (nginx's `proxy_pass` without a URI does the same): only the choice of route uses
//! the normalized form.

use std::borrow::Cow;

/// Whether `path` may need normalizing: a `%`, or a `/` followed by `.` or `/`. Nearly every
/// request has none, and then its path is matched as it came without a copy.
#[inline]
fn plain(path: &[u8]) -> bool {
    // memchr's iterator costs about 150 instructions to set up: more than a byte loop over
    // a path of up to [`SHORT_PATH`] bytes (about 4 per byte), and most paths are short.
    if path.len() <= SHORT_PATH {
        plain_bytewise(path)
    } else {
        plain_memchr(path)
    }
}

const SHORT_PATH: usize = 32;

#[inline(always)]
fn plain_bytewise(path: &[u8]) -> bool {
    let mut after_slash = false;
    for &b in path {
        if b == b'%' || (after_slash && (b == b'.' || b == b'/')) {
            return false;
        }
        after_slash = b == b'/';
    }
    true
}

fn plain_memchr(path: &[u8]) -> bool {
    memchr::memchr2_iter(b'%', b'/', path)
        .all(|i| path[i] == b'/' && !matches!(path.get(i + 1), Some(b'.' | b'/')))
}

/// The byte a pct-encoding's two hex digits (the bytes after its `%`) stand for.
fn pct_byte(digits: &[u8]) -> Option<u8> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    Some(hex(*digits.first()?)? << 4 | hex(*digits.get(1)?)?)
}

/// The path `path_prefix` is matched against (see the module doc), or why the target is
/// refused. A target that is not a path (`*`, an authority) is returned as it is.
pub fn route_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let raw = path.as_bytes();
    if raw.first() != Some(&b'/') || plain(raw) {
        return Ok(Cow::Borrowed(path));
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        match pct_byte(&raw[i + 1..]) {
            Some(0) => return Err("an encoded NUL in the path"),
            Some(b) => decoded.push(b),
            None => return Err("a % in the path not followed by two hex digits"),
        }
        i += 3;
    }
    // segments between slashes; empty ones (merged slashes) and `.` drop out, `..` takes
    // the one before it back
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    let mut trailing = false;
    for seg in decoded.split(|&b| b == b'/').skip(1) {
        trailing = true;
        match seg {
            b"" | b"." => {}
            b".." => {
                let Some(cut) = out.iter().rposition(|&b| b == b'/') else {
                    return Err("a path that climbs above the root");
                };
                out.truncate(cut);
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(seg);
                trailing = false;
            }
        }
    }
    if trailing || out.is_empty() {
        out.push(b'/');
    }
    Ok(Cow::Owned(match String::from_utf8(out) {
        Ok(s) => s,
        // bytes decoded from `%XX` need not be UTF-8; a prefix (UTF-8) cannot match past them
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}

/// RFC 3986's unreserved and sub-delims characters: what a reg-name is made of (with
/// pct-encoded bytes), and most of a path's characters.
pub const fn unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// The bytes a reg-name may hold (RFC 3986 §3.2.2), `%` included (a pct-encoded byte's two
/// hex digits are checked apart).
const fn reg_name_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = unreserved_or_sub_delim(c as u8) || c as u8 == b'%';
        c += 1;
    }
    t
}
static REG_NAME: [bool; 256] = reg_name_table();

/// Whether `host` is a Host field value (or `:authority`) the proxy takes: empty (RFC 9112
/// §3.2 allows it for a target without an authority), or `uri-host [":" port]` with the
/// port's digits at most 65535. Anything else is answered 400, as RFC 9112 §3.2 requires:
/// a space, `/`, `@`, `?`, a bad `%` or port would be read one way here and another way by
/// a backend that builds links from it.
pub fn valid_host(host: &str) -> bool {
    let b = host.as_bytes();
    let (name, port) = if b.first() == Some(&b'[') {
        // IP-literal: hex, `:` and `.` (IPv6, with an embedded IPv4), or IPvFuture's
        // unreserved and sub-delims
        let Some(end) = b.iter().position(|&c| c == b']') else {
            return false;
        };
        let inner = &b[1..end];
        if inner.is_empty() || !inner.iter().all(|&c| c == b':' || REG_NAME[c as usize]) {
            return false;
        }
        (&b[..0], &b[end + 1..])
    } else {
        match b.iter().position(|&c| c == b':') {
            Some(i) => (&b[..i], &b[i..]),
            None => (b, &b[b.len()..]),
        }
    };
    let name_ok = name
        .iter()
        .enumerate()
        .all(|(i, &c)| REG_NAME[c as usize] && (c != b'%' || pct_byte(&name[i + 1..]).is_some()));
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits
                    .iter()
                    .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))
                    <= 65535
        }
        Some(_) => false,
    };
    name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, &'static str> {
        route_path(p).map(Cow::into_owned)
    }

    #[test]
    fn the_byte_loop_and_memchr_agree_on_every_short_path() {
        // every path of up to 6 bytes over the bytes that matter, and a filler
        let alphabet = [b'/', b'.', b'%', b'a'];
        let (mut checked, mut not_plain) = (0, 0);
        for len in 0..=6u32 {
            for n in 0..4usize.pow(len) {
                let path: Vec<u8> = (0..len).map(|i| alphabet[n / 4usize.pow(i) % 4]).collect();
                let p = plain_memchr(&path);
                assert_eq!(
                    plain_bytewise(&path),
                    p,
                    "{}",
                    String::from_utf8_lossy(&path)
                );
                checked += 1;
                not_plain += usize::from(!p);
            }
        }
        assert_eq!(checked, (0..=6).map(|l| 4usize.pow(l)).sum::<usize>());
        assert!(not_plain > 1000, "{not_plain}");
        // at the length where `plain` changes method
        for at in 0..=SHORT_PATH {
            let mut path = [b'a'; SHORT_PATH + 1];
            path[0] = b'/';
            path[at] = b'%';
            for len in [SHORT_PATH, SHORT_PATH + 1] {
                assert_eq!(
                    plain(&path[..len]),
                    plain_memchr(&path[..len]),
                    "{at} {len}"
                );
            }
        }
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for p in ["/", "/ok", "/a/b.c/d", "/a.b", "/a-./b", "*", "a:443"] {
            assert!(matches!(route_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn paths_are_matched_as_a_backend_reads_them() {
        for (raw, want) in [
            ("/x/../admin/del", "/admin/del"),
            ("//admin/del", "/admin/del"),
            ("/./admin", "/admin"),
            ("/admin/./del", "/admin/del"),
            ("/%61dmin/del", "/admin/del"),
            ("/x/%2e%2E/admin", "/admin"),
            ("/x/%2E%2e%2fadmin", "/admin"),
            ("/admin%2Fdel", "/admin/del"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/a//", "/a/"),
            ("/...", "/..."),
            (
                "/.well-known/acme-challenge/t",
                "/.well-known/acme-challenge/t",
            ),
            ("/%C3%A9t%C3%A9", "/été"),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
        assert_eq!(norm("/%ff/x").as_deref(), Ok("/\u{fffd}/x"));
    }

    #[test]
    fn names_why_a_path_is_refused() {
        for (raw, why) in [
            ("/..", "a path that climbs above the root"),
            ("/../admin", "a path that climbs above the root"),
            ("/a/../../b", "a path that climbs above the root"),
            ("/%2e%2e/b", "a path that climbs above the root"),
            ("/a%zz", "a % in the path not followed by two hex digits"),
            ("/a%4", "a % in the path not followed by two hex digits"),
            ("/a%", "a % in the path not followed by two hex digits"),
            ("/a%00b", "an encoded NUL in the path"),
        ] {
            assert_eq!(norm(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn hosts() {
        for h in [
            "",
            "a",
            "app.test",
            "App.Test:8080",
            "a:",
            "a:65535",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[::ffff:127.0.0.1]",
            "xn--bcher-kva.example",
            "a_b.test",
            "a%41b",
        ] {
            assert!(valid_host(h), "{h:?} refused");
        }
        for h in [
            "a b", "a/b", "a@b", "a?b", "a#b", "a\\b", "a\"b", "a:99999", "a:65536", "a:123456",
            "a:8o", "a:80:80", "[::1", "[]", "[::1]x", "[::1]:x", "[::1 ]", "a%4", "a%zz",
            "é.test",
        ] {
            assert!(!valid_host(h), "{h:?} taken");
        }
    }
}
