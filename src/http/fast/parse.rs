//! HTTP/1 heads parsed for the lean engine: a strict single pass for the common shape, and
//! httparse for everything else.
//!
//! httparse takes 786 instructions for `GET /ok` with one field and 1,412 for a five-field
//! response head (callgrind): its SIMD scans pay their setup on every short name and value,
//! and it allows forms (bare LF line ends, a missing reason, obs-text) that need checks on
//! every byte. The heads a proxy sees are almost all short, CRLF-terminated and plain
//! ASCII, so [`request`] and [`response`] first try one pass that accepts only that shape:
//! a token method, a target of visible ASCII, `HTTP/1.0` or `HTTP/1.1`, single spaces,
//! fields of token names and `: ` values, every line ending in CRLF, the whole head in the
//! buffer. On that shape it gives exactly httparse's result (the same method, target,
//! version, status and reason, each field's name and value as the same subslices of the
//! buffer, the same head length). Anything else (a partial head, a byte it does not take,
//! too many fields) goes to httparse, which gives the answer, the error or `Partial` as
//! before. The test `agrees_with_httparse_on_every_head_it_takes` holds the two equal over
//! generated and mutated heads.

use crate::policy::scan;
use httparse::Header;
use std::mem::MaybeUninit;

/// A name byte (RFC 9110 tchar).
const TCHAR: u8 = 1;
/// A field value byte as httparse takes it: HTAB, SP, VCHAR, obs-text.
const VALUE: u8 = 2;
/// A request-target byte this pass takes: VCHAR (httparse also takes obs-text, left to it).
const TARGET: u8 = 4;
/// A reason-phrase byte this pass takes: HTAB, SP, VCHAR (obs-text, which httparse turns
/// into an empty reason, is left to it).
const REASON: u8 = 8;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let tchar = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        let vchar = c >= 0x21 && c <= 0x7e;
        let mut v = 0;
        if tchar {
            v |= TCHAR;
        }
        if c == b'\t' || c == b' ' || vchar || c >= 0x80 {
            v |= VALUE;
        }
        if vchar {
            v |= TARGET;
        }
        if c == b'\t' || c == b' ' || vchar {
            v |= REASON;
        }
        t[b] = v;
        b += 1;
    }
    t
};

#[inline(always)]
fn class(b: u8) -> u8 {
    CLASS[b as usize]
}

/// Bytes from `i` while each has `bit`; the index of the first that has not (or the end).
#[inline(always)]
fn run(buf: &[u8], mut i: usize, bit: u8) -> usize {
    while i < buf.len() && class(buf[i]) & bit != 0 {
        i += 1;
    }
    i
}

/// The end of the VALUE bytes from `i`: the first control byte other than a tab (the line's
/// CR, usually) or DEL, found many bytes at a time ([`scan::next_control`]): values are
/// most of a head's bytes.
#[inline(always)]
fn value_end(buf: &[u8], mut i: usize) -> usize {
    loop {
        match scan::next_control(buf, i) {
            Some(j) if buf[j] == b'\t' => i = j + 1,
            Some(j) => return j,
            None => return buf.len(),
        }
    }
}

/// `HTTP/1.0` or `HTTP/1.1` at `i`: the minor version.
#[inline(always)]
fn version(buf: &[u8], i: usize) -> Option<u8> {
    match buf.get(i..i + 8)? {
        b"HTTP/1.1" => Some(1),
        b"HTTP/1.0" => Some(0),
        _ => None,
    }
}

#[inline(always)]
fn crlf(buf: &[u8], i: usize) -> bool {
    buf.get(i..i + 2) == Some(b"\r\n")
}

/// A slice of `buf` this pass has classed byte by byte as ASCII (TCHAR, TARGET or REASON),
/// as text. Not `str::from_utf8`: as a call per name it cost more than the whole parse.
#[inline(always)]
fn ascii(b: &[u8]) -> &str {
    debug_assert!(b.is_ascii());
    // SAFETY: every caller passes bytes whose class (TCHAR, TARGET, REASON) holds only
    // ASCII bytes, which are valid UTF-8 on their own.
    unsafe { std::str::from_utf8_unchecked(b) }
}

/// `str::from_utf8`, with one pass over an ASCII value (a Host field's usual bytes) in place
/// of the validator's (about 100 instructions for a 15-byte host, per request).
#[inline]
pub(super) fn utf8(v: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if v.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8 on their own.
        Ok(unsafe { std::str::from_utf8_unchecked(v) })
    } else {
        std::str::from_utf8(v)
    }
}

/// The fields from `i` to the empty line, into `hdrs`: their count and the head's end.
#[inline(always)]
fn fields<'b>(
    buf: &'b [u8],
    mut i: usize,
    hdrs: &mut [MaybeUninit<Header<'b>>],
) -> Option<(usize, usize)> {
    let mut n = 0;
    loop {
        if crlf(buf, i) {
            return Some((n, i + 2));
        }
        let name_end = scan::name_end(buf, i, |b| class(b) & TCHAR != 0);
        if name_end == i || buf.get(name_end) != Some(&b':') {
            return None;
        }
        let name = ascii(&buf[i..name_end]);
        let mut v = name_end + 1;
        while v < buf.len() && (buf[v] == b' ' || buf[v] == b'\t') {
            v += 1;
        }
        let end = value_end(buf, v);
        if !crlf(buf, end) {
            return None;
        }
        let mut last = end;
        while last > v && (buf[last - 1] == b' ' || buf[last - 1] == b'\t') {
            last -= 1;
        }
        // httparse's empty value is the empty slice where its line ends
        let value = if last > v {
            &buf[v..last]
        } else {
            &buf[end..end]
        };
        hdrs.get_mut(n)?.write(Header { name, value });
        n += 1;
        i = end + 2;
    }
}

/// The request line and fields of a head in the shape this pass takes.
struct Req<'b> {
    method: &'b str,
    path: &'b str,
    version: u8,
    fields: usize,
    len: usize,
}

fn strict_request<'b>(buf: &'b [u8], hdrs: &mut [MaybeUninit<Header<'b>>]) -> Option<Req<'b>> {
    let m = run(buf, 0, TCHAR);
    if m == 0 || buf.get(m) != Some(&b' ') {
        return None;
    }
    let p = run(buf, m + 1, TARGET);
    if p == m + 1 || buf.get(p) != Some(&b' ') {
        return None;
    }
    let version = version(buf, p + 1)?;
    if !crlf(buf, p + 9) {
        return None;
    }
    let (fields, len) = fields(buf, p + 11, hdrs)?;
    Some(Req {
        method: ascii(&buf[..m]),
        path: ascii(&buf[m + 1..p]),
        version,
        fields,
        len,
    })
}

/// The status line and fields of a head in the shape this pass takes.
struct Resp<'b> {
    version: u8,
    code: u16,
    reason: &'b str,
    fields: usize,
    len: usize,
}

fn strict_response<'b>(buf: &'b [u8], hdrs: &mut [MaybeUninit<Header<'b>>]) -> Option<Resp<'b>> {
    let version = version(buf, 0)?;
    let d = buf.get(8..13)?;
    if d[0] != b' ' || !d[1..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = d[1..4]
        .iter()
        .fold(0u16, |c, b| c * 10 + u16::from(b - b'0'));
    let (reason, line_end) = match d[4] {
        b'\r' => ("", 12),
        b' ' => {
            let e = run(buf, 13, REASON);
            (ascii(&buf[13..e]), e)
        }
        _ => return None,
    };
    if !crlf(buf, line_end) {
        return None;
    }
    let (fields, len) = fields(buf, line_end + 2, hdrs)?;
    Some(Resp {
        version,
        code,
        reason,
        fields,
        len,
    })
}

/// The initialised first `n` of `hdrs`.
fn init<'h, 'b>(hdrs: &'h mut [MaybeUninit<Header<'b>>], n: usize) -> &'h mut [Header<'b>] {
    let hdrs = &mut hdrs[..n];
    // SAFETY: the strict pass wrote each of the first `n` entries before returning `n`, and
    // MaybeUninit<T> has T's layout.
    unsafe { &mut *(hdrs as *mut [MaybeUninit<Header<'b>>] as *mut [Header<'b>]) }
}

/// Parse a request head into `req`, as `httparse::Request::parse_with_uninit_headers`.
pub fn request<'h, 'b>(
    req: &mut httparse::Request<'h, 'b>,
    buf: &'b [u8],
    hdrs: &'h mut [MaybeUninit<Header<'b>>],
) -> httparse::Result<usize> {
    match strict_request(buf, hdrs) {
        Some(r) => {
            req.method = Some(r.method);
            req.path = Some(r.path);
            req.version = Some(r.version);
            req.headers = init(hdrs, r.fields);
            Ok(httparse::Status::Complete(r.len))
        }
        None => req.parse_with_uninit_headers(buf, hdrs),
    }
}

/// Parse a response head into `resp`, as httparse's default `ParserConfig` does.
pub fn response<'h, 'b>(
    resp: &mut httparse::Response<'h, 'b>,
    buf: &'b [u8],
    hdrs: &'h mut [MaybeUninit<Header<'b>>],
) -> httparse::Result<usize> {
    match strict_response(buf, hdrs) {
        Some(r) => {
            resp.version = Some(r.version);
            resp.code = Some(r.code);
            resp.reason = Some(r.reason);
            resp.headers = init(hdrs, r.fields);
            Ok(httparse::Status::Complete(r.len))
        }
        None => {
            httparse::ParserConfig::default().parse_response_with_uninit_headers(resp, buf, hdrs)
        }
    }
}

/// Few, so that heads with more fields reach httparse's TooManyHeaders through both.
const HDRS: usize = 8;

/// The fuzz target `heads`, and the tests: [`request`] against httparse on one buffer,
/// panicking where they differ in anything a caller sees (the result, the request line,
/// each field's name and value as the same subslice of `buf`). Whether the strict pass
/// took the head. A check, not an API.
pub fn agree_request(buf: &[u8]) -> bool {
    let mut a = [const { MaybeUninit::<Header>::uninit() }; HDRS];
    let mut b = [const { MaybeUninit::<Header>::uninit() }; HDRS];
    let mut ours = httparse::Request::new(&mut []);
    let mut theirs = httparse::Request::new(&mut []);
    let strict = {
        let mut c = [const { MaybeUninit::<Header>::uninit() }; HDRS];
        strict_request(buf, &mut c).is_some()
    };
    let r1 = request(&mut ours, buf, &mut a);
    let r2 = theirs.parse_with_uninit_headers(buf, &mut b);
    assert_eq!(r1, r2, "result for {:?}", String::from_utf8_lossy(buf));
    if let Ok(httparse::Status::Complete(_)) = r1 {
        assert_eq!(ours.method, theirs.method);
        assert_eq!(ours.path, theirs.path);
        assert_eq!(ours.version, theirs.version);
        same_fields(ours.headers, theirs.headers, buf);
    }
    strict
}

/// [`agree_request`] for a response head and [`response`].
pub fn agree_response(buf: &[u8]) -> bool {
    let mut a = [const { MaybeUninit::<Header>::uninit() }; HDRS];
    let mut b = [const { MaybeUninit::<Header>::uninit() }; HDRS];
    let mut ours = httparse::Response::new(&mut []);
    let mut theirs = httparse::Response::new(&mut []);
    let strict = {
        let mut c = [const { MaybeUninit::<Header>::uninit() }; HDRS];
        strict_response(buf, &mut c).is_some()
    };
    let r1 = response(&mut ours, buf, &mut a);
    let r2 = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut theirs,
        buf,
        &mut b,
    );
    assert_eq!(r1, r2, "result for {:?}", String::from_utf8_lossy(buf));
    if let Ok(httparse::Status::Complete(_)) = r1 {
        assert_eq!(ours.version, theirs.version);
        assert_eq!(ours.code, theirs.code);
        assert_eq!(ours.reason, theirs.reason);
        same_fields(ours.headers, theirs.headers, buf);
    }
    strict
}

/// The same fields, each name and value the same subslice of the buffer (callers may take
/// a field's offset in the head from its pointer).
fn same_fields(ours: &[Header], theirs: &[Header], buf: &[u8]) {
    let s = String::from_utf8_lossy(buf);
    assert_eq!(ours.len(), theirs.len(), "field count for {s:?}");
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o.name, t.name, "{s:?}");
        assert_eq!(o.value, t.value, "{s:?}");
        assert_eq!(o.name.as_ptr(), t.name.as_ptr(), "name position in {s:?}");
        assert_eq!(
            o.value.as_ptr(),
            t.value.as_ptr(),
            "value position in {s:?}"
        );
    }
}

#[cfg(test)]
mod tests;
