//! Finding the end of a chunked body that is passed through unchanged.
//!
//! The lean engine forwards a backend's chunked response byte for byte (no decode and
//! re-encode) but for its trailer fields ([`ChunkedScanner::without_trailers`]), and the
//! request-head guard hands on exactly one chunked request body, so both only need to know
//! where the body ends, and to refuse framing that does not parse. What is
//! accepted is RFC 9112 §7.1.1's grammar and nothing more: hex sizes (at most 15 digits),
//! extensions of visible characters, spaces and tabs (no control bytes, no bare LF), trailer
//! lines that are `token ":" value`, every line ended by CRLF and at most [`MAX_LINE`] long.
//! Anything else is a broken peer: a 400 for a request, a 502 (or a cut) for a response. The
//! scanner is fed the bytes as they arrive, in any split.

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        digits: usize,
    },
    /// After the size: extensions up to the line's end.
    Ext,
    /// Expecting the LF of a size line.
    SizeLf,
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line; `colon`: past its name.
    Trailer {
        colon: bool,
    },
    TrailerLf,
    FinalLf,
    Done,
}

/// RFC 9110 tchar.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte an extension or a field value may hold: visible ASCII, space, tab, obs-text.
fn ext_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    line: usize,
    /// A trailer line has begun.
    trailers: bool,
    /// Where the first trailer line began in the input of the last scan, if it did there.
    trailers_at: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// All of the input belongs to the body; more is needed.
    More,
    /// The body ends after this many bytes of the input.
    Done(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk(pub &'static str);

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailers: false,
            trailers_at: None,
        }
    }
}

impl ChunkedScanner {
    pub fn scan(&mut self, data: &[u8]) -> Result<Scan, BadChunk> {
        self.scan_into(data, None)
    }

    /// Of the `take` bytes the last scan gave to the body, how many to pass on when the
    /// body is relayed without its trailer fields, and whether to add the body's final CRLF
    /// after them (`done`: the scan ended the body). Trailer lines are one run at the end of
    /// the body, just before that CRLF; both are held back once they begin, so the body
    /// passed on ends `0\r\n\r\n` whatever the backend sent after its last chunk.
    pub fn without_trailers(&self, take: usize, done: bool) -> (usize, bool) {
        if !self.trailers {
            return (take, false);
        }
        (self.trailers_at.unwrap_or(0).min(take), done)
    }

    /// As [`Self::scan`], also appending the chunk data (without the framing) to `out`: for a
    /// downstream that does not speak chunked (HTTP/2).
    pub fn scan_into(&mut self, data: &[u8], out: Option<&mut Vec<u8>>) -> Result<Scan, BadChunk> {
        match out {
            Some(o) => self.run(data, &mut |d| o.extend_from_slice(d), None),
            None => self.run(data, &mut |_| {}, None),
        }
    }

    /// As [`Self::scan_into`], also adding the length of the chunk data (the framing not
    /// counted) to `n`: a body's bytes as every engine counts them, HTTP/2 and HTTP/3 having
    /// no framing.
    pub fn scan_counting(
        &mut self,
        data: &[u8],
        out: Option<&mut Vec<u8>>,
        n: &mut u64,
    ) -> Result<Scan, BadChunk> {
        match out {
            Some(o) => self.run(
                data,
                &mut |d| {
                    *n += d.len() as u64;
                    o.extend_from_slice(d)
                },
                None,
            ),
            None => self.run(data, &mut |d| *n += d.len() as u64, None),
        }
    }

    /// Decode `wire` (the next bytes of a chunked body): the ranges of it that hold data
    /// (into `ranges`, cleared first), how many bytes they hold, and the scan's outcome
    /// (`Done(k)`: the body ended after `k` bytes of `wire`; the rest is not taken). Nothing
    /// is copied: an engine writes the ranges between [`frame_head`] and [`frame_tail`]
    /// ([`frame_into`] copies them).
    ///
    /// Why: the lean engine relays a client's chunked request body in its own framing, as
    /// the general engine (Pingora) does, so a backend sees the same body from either, and
    /// none of a client's extensions or trailer fields reaches a parser that could read
    /// them differently.
    pub fn data_pieces(
        &mut self,
        wire: &[u8],
        ranges: &mut Vec<std::ops::Range<usize>>,
    ) -> Result<(u64, Scan), BadChunk> {
        ranges.clear();
        let base = wire.as_ptr() as usize;
        let mut n = 0usize;
        let scan = self.run(
            wire,
            &mut |d: &[u8]| {
                // `d` is a subslice of `wire`
                let at = d.as_ptr() as usize - base;
                n += d.len();
                ranges.push(at..at + d.len());
            },
            None,
        )?;
        Ok((n as u64, scan))
    }

    /// As [`Self::scan`], also recording in `spans` (cleared first) every chunk with data
    /// that lies wholly in `data`, for [`coalesce`].
    pub fn scan_spans(&mut self, data: &[u8], spans: &mut Vec<Span>) -> Result<Scan, BadChunk> {
        spans.clear();
        // positions are kept as u32 (a span is 12 bytes); no read comes near 4 GiB
        let record = u32::try_from(data.len()).is_ok();
        self.run(data, &mut |_| {}, record.then_some(spans))
    }

    /// The scanner over `data`, giving each piece of chunk data to `on_data` and recording
    /// whole chunks in `spans`.
    fn run(
        &mut self,
        data: &[u8],
        on_data: &mut impl FnMut(&[u8]),
        mut spans: Option<&mut Vec<Span>>,
    ) -> Result<Scan, BadChunk> {
        let mut i = 0;
        self.trailers_at = None;
        // where the chunk being read began, if it began in `data`, and where its data began
        let mut began = (self.state == State::Size { digits: 0 }).then_some(0);
        let mut data_at = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                State::Size { digits } => {
                    let v = match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        b'A'..=b'F' => Some(b - b'A' + 10),
                        _ => None,
                    };
                    match v {
                        Some(v) => {
                            if digits >= 15 {
                                return Err(BadChunk("chunk size too large"));
                            }
                            self.size = self.size * 16 + u64::from(v);
                            self.state = State::Size { digits: digits + 1 };
                        }
                        None if digits == 0 => return Err(BadChunk("chunk size missing")),
                        None if b == b'\r' => self.state = State::SizeLf,
                        None if b == b';' || b == b' ' || b == b'\t' => {
                            self.line = 0;
                            self.state = State::Ext;
                        }
                        None => return Err(BadChunk("bad chunk size")),
                    }
                    i += 1;
                }
                State::Ext => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if !ext_byte(b) {
                        return Err(BadChunk("control byte in a chunk extension"));
                    } else {
                        self.line += 1;
                        if self.line > MAX_LINE {
                            return Err(BadChunk("chunk extension too long"));
                        }
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk("chunk size line without CRLF"));
                    }
                    i += 1;
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        data_at = i;
                        self.state = State::Data { left: self.size };
                    }
                }
                State::Data { left } => {
                    let avail = (data.len() - i) as u64;
                    let take = avail.min(left) as usize;
                    if take > 0 {
                        on_data(&data[i..i + take]);
                    }
                    i += take;
                    if avail >= left {
                        self.state = State::DataCr;
                    } else {
                        self.state = State::Data { left: left - avail };
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk("chunk data without CRLF"));
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk("chunk data without CRLF"));
                    }
                    i += 1;
                    if let (Some(spans), Some(start)) = (spans.as_deref_mut(), began) {
                        // `scan_spans` records only in an input with u32 positions
                        spans.push(Span {
                            start: start as u32,
                            data: data_at as u32,
                            len: self.size as u32,
                        });
                    }
                    began = Some(i);
                    self.size = 0;
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => {
                    i += 1;
                    if b == b'\r' {
                        self.state = State::FinalLf;
                    } else if tchar(b) {
                        if !self.trailers {
                            self.trailers = true;
                            self.trailers_at = Some(i - 1);
                        }
                        self.line = 1;
                        self.state = State::Trailer { colon: false };
                    } else {
                        return Err(BadChunk("bad trailer field name"));
                    }
                }
                State::Trailer { colon } => {
                    i += 1;
                    if b == b'\r' {
                        if !colon {
                            return Err(BadChunk("trailer line without a colon"));
                        }
                        self.state = State::TrailerLf;
                        continue;
                    }
                    if colon {
                        if !ext_byte(b) {
                            return Err(BadChunk("control byte in a trailer field"));
                        }
                    } else if b == b':' {
                        self.state = State::Trailer { colon: true };
                    } else if !tchar(b) {
                        return Err(BadChunk("bad trailer field name"));
                    }
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(BadChunk("trailer line too long"));
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk("trailer line without CRLF"));
                    }
                    i += 1;
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(BadChunk("chunked body without its final CRLF"));
                    }
                    self.state = State::Done;
                    return Ok(Scan::Done(i + 1));
                }
                State::Done => return Ok(Scan::Done(i)),
            }
        }
        Ok(if self.state == State::Done {
            Scan::Done(data.len())
        } else {
            Scan::More
        })
    }
}

/// A chunk that lies wholly in one scanned input: its size line begins at `start`, and its
/// `len` bytes of data at `data`, followed by its CRLF. Small (12 bytes): a read of 64 KiB
/// of 1-byte chunks holds 10,922 of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    start: u32,
    data: u32,
    len: u32,
}

impl Span {
    fn start(&self) -> usize {
        self.start as usize
    }
    fn data(&self) -> std::ops::Range<usize> {
        self.data as usize..self.data as usize + self.len as usize
    }
    /// Past the chunk's closing CRLF.
    fn end(&self) -> usize {
        self.data().end + 2
    }
}

/// Chunks with this much data or more are left as they are: one write per chunk is then
/// already a write per kilobyte, and moving their data would cost more than it saves (an
/// upload of 4 KiB chunks had all of its data moved once more in memory).
const MERGE_BELOW: usize = 1024;

/// The most data one merged chunk holds. It bounds the merged size line to six hex digits,
/// which [`coalesce`]'s in-place moves rely on (and no read is near it).
const MAX_MERGED: usize = 0xff_ffff;

/// Rewrite each run of two or more adjacent whole chunks of `buf` (as [`ChunkedScanner::
/// scan_spans`] found them in it), each under [`MERGE_BELOW`] bytes of data, as one chunk
/// with the same data, in place; returns the
/// new length of `buf`. Bytes outside the runs (a chunk split across reads, the last chunk,
/// trailers) are kept as they are, and extensions of merged chunks are dropped, as a proxy
/// that decodes and re-encodes the body drops them.
///
/// Why: a proxy that forwards chunk by chunk pays a write to the backend for every chunk
/// the client sends. A client that sends a body as 1-byte chunks (6 bytes on the wire
/// each) would buy a syscall for every 6 bytes; merged, each read costs one.
///
/// The merged chunk is never longer than the run: its framing is at most ten bytes (six
/// size digits, two CRLFs) and a run of two or more chunks carries at least ten (a size
/// digit and two CRLFs each). So the data can move left in order without overtaking bytes
/// not yet moved, and the size line is written last, over bytes already moved.
pub fn coalesce(buf: &mut [u8], spans: &[Span]) -> usize {
    let (mut w, mut r) = (0, 0);
    let mut i = 0;
    while i < spans.len() {
        // the run starting at spans[i]
        let small = |s: &Span| (s.len as usize) < MERGE_BELOW;
        let mut j = i + 1;
        let mut total = spans[i].len as usize;
        while j < spans.len()
            && small(&spans[i])
            && small(&spans[j])
            && spans[j].start() == spans[j - 1].end()
        {
            if total + spans[j].len as usize > MAX_MERGED {
                break;
            }
            total += spans[j].len as usize;
            j += 1;
        }
        if j - i < 2 {
            i = j;
            continue;
        }
        let run = &spans[i..j];
        buf.copy_within(r..run[0].start(), w);
        w += run[0].start() - r;
        let mut line = [0u8; SIZE_LINE];
        let line_len = size_line(total, &mut line);
        let mut at = w + line_len;
        for s in run {
            let d = s.data();
            let n = d.len();
            buf.copy_within(d, at);
            at += n;
        }
        buf[at..at + 2].copy_from_slice(b"\r\n");
        buf[w..w + line_len].copy_from_slice(&line[..line_len]);
        w = at + 2;
        r = run[run.len() - 1].end();
        i = j;
    }
    buf.copy_within(r.., w);
    w + buf.len() - r
}

/// Room for any chunk-size line [`size_line`] writes: 16 hex digits and CRLF.
pub const SIZE_LINE: usize = 18;

/// Append the data of `wire` that [`ChunkedScanner::data_pieces`] found (`ranges`, `n` bytes,
/// `scan`) to `out` as one chunk, then the last chunk if the body ended.
pub fn frame_into(
    out: &mut Vec<u8>,
    wire: &[u8],
    ranges: &[std::ops::Range<usize>],
    n: u64,
    scan: Scan,
) {
    let (line, k) = frame_head(n);
    let tail = frame_tail(n, scan);
    out.reserve(k + n as usize + tail.len());
    out.extend_from_slice(&line[..k]);
    for r in ranges {
        out.extend_from_slice(&wire[r.clone()]);
    }
    out.extend_from_slice(tail);
}

/// The size line that opens `n` bytes of data framed as one chunk, and its length (0: no
/// data, no chunk: an empty one would end the body).
pub fn frame_head(n: u64) -> ([u8; SIZE_LINE], usize) {
    let mut line = [0u8; SIZE_LINE];
    let k = match usize::try_from(n) {
        Ok(n) if n > 0 => size_line(n, &mut line),
        _ => 0,
    };
    (line, k)
}

/// What follows `n` bytes of data framed as one chunk: the chunk's CRLF (if there was
/// data), then the last chunk if the scan ended the body (no trailer fields).
pub fn frame_tail(n: u64, scan: Scan) -> &'static [u8] {
    const TAIL: &[u8] = b"\r\n0\r\n\r\n";
    match (n > 0, scan) {
        (true, Scan::Done(_)) => TAIL,
        (true, Scan::More) => &TAIL[..2],
        (false, Scan::Done(_)) => &TAIL[2..],
        (false, Scan::More) => &[],
    }
}

/// The size line of a chunk of `n` bytes (lowercase hex, CRLF) into `out`; its length. One
/// writer for every chunk the proxy frames, without formatting into a String.
pub fn size_line(n: usize, out: &mut [u8; SIZE_LINE]) -> usize {
    let digits = ((usize::BITS - n.leading_zeros()) as usize)
        .div_ceil(4)
        .max(1);
    for (k, o) in out[..digits].iter_mut().enumerate() {
        let nib = (n >> (4 * (digits - 1 - k))) & 0xf;
        *o = b"0123456789abcdef"[nib];
    }
    out[digits..digits + 2].copy_from_slice(b"\r\n");
    digits + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<Scan, BadChunk> {
        ChunkedScanner::default().scan(body)
    }

    #[test]
    fn finds_the_end_in_one_piece_and_byte_by_byte() {
        let body =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(whole(body), Ok(Scan::Done(body.len() - 4)));
        let mut s = ChunkedScanner::default();
        for (i, b) in body.iter().enumerate() {
            match s.scan(std::slice::from_ref(b)).unwrap() {
                Scan::More => assert!(i < body.len() - 5),
                Scan::Done(n) => {
                    assert_eq!((i, n), (body.len() - 5, 1));
                    return;
                }
            }
        }
        panic!("never ended");
    }

    #[test]
    fn trailers_are_held_back_in_any_split() {
        let body = b"5\r\nhello\r\n0;e=1\r\nX-T: 1\r\nX-U: 2\r\n\r\nNEXT";
        let want = b"5\r\nhello\r\n0;e=1\r\n\r\n";
        for split in 0..body.len() {
            let mut s = ChunkedScanner::default();
            let mut passed = Vec::new();
            for piece in [&body[..split], &body[split..]] {
                let (take, done) = match s.scan(piece).unwrap() {
                    Scan::Done(k) => (k, true),
                    Scan::More => (piece.len(), false),
                };
                let (pass, crlf) = s.without_trailers(take, done);
                passed.extend_from_slice(&piece[..pass]);
                if crlf {
                    passed.extend_from_slice(b"\r\n");
                }
                if done {
                    break;
                }
            }
            assert_eq!(passed, want, "split at {split}");
        }
        // without trailers the body passes whole, its final CRLF included
        let plain = b"3\r\nabc\r\n0\r\n\r\n";
        let mut s = ChunkedScanner::default();
        assert_eq!(s.scan(plain), Ok(Scan::Done(plain.len())));
        assert_eq!(s.without_trailers(plain.len(), true), (plain.len(), false));
    }

    #[test]
    fn decodes_the_data_in_any_split() {
        let body = b"5\r\nhello\r\n3;x=y\r\n, w\r\n4\r\norld\r\n0\r\n\r\n";
        for split in 1..body.len() {
            let mut s = ChunkedScanner::default();
            let mut out = Vec::new();
            let mut done = false;
            for piece in body.chunks(split) {
                if let Scan::Done(_) = s.scan_into(piece, Some(&mut out)).unwrap() {
                    done = true;
                }
            }
            assert!(done);
            assert_eq!(out, b"hello, world");
        }
    }

    /// One piece decoded and framed again, as the lean engine sends it on.
    fn reframe(
        s: &mut ChunkedScanner,
        wire: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(u64, Scan), BadChunk> {
        let mut ranges = Vec::new();
        let (n, scan) = s.data_pieces(wire, &mut ranges)?;
        frame_into(out, wire, &ranges, n, scan);
        Ok((n, scan))
    }

    /// A body relayed in the proxy's own framing ([`ChunkedScanner::data_pieces`],
    /// [`frame_into`]), in every
    /// split into two pieces and byte by byte: the same data, one chunk per piece with data,
    /// no extension or trailer, the last chunk once, nothing past the end.
    #[test]
    fn reframes_the_data_in_any_split() {
        let body = b"5;a=b\r\nhello\r\n3;x=y\r\n, w\r\n4\r\norld\r\n0;z\r\nX-T: 1\r\n\r\nNEXT";
        let pieces = |split: usize| -> Vec<&[u8]> {
            if split == 0 {
                body.chunks(1).collect()
            } else {
                vec![&body[..split], &body[split..]]
            }
        };
        for split in 0..body.len() {
            let (mut s, mut out, mut data, mut ended) =
                (ChunkedScanner::default(), Vec::new(), 0, false);
            for piece in pieces(split) {
                assert!(!ended, "split {split}: a piece after the end");
                let (n, scan) = reframe(&mut s, piece, &mut out).unwrap();
                data += n;
                ended = matches!(scan, Scan::Done(_));
                if ended {
                    break;
                }
            }
            assert!(ended, "split {split}");
            assert_eq!(data, 12, "split {split}");
            let text = String::from_utf8(out.clone()).unwrap();
            assert!(text.ends_with("\r\n0\r\n\r\n"), "split {split}: {text:?}");
            assert!(!text.contains(';') && !text.contains("X-T"), "{text:?}");
            assert!(!text.contains("NEXT"), "{text:?}");
            let mut decoded = Vec::new();
            let mut check = ChunkedScanner::default();
            assert_eq!(
                check.scan_into(&out, Some(&mut decoded)),
                Ok(Scan::Done(out.len())),
                "split {split}: {text:?}"
            );
            assert_eq!(decoded, b"hello, world", "split {split}");
        }
        // one piece: one chunk with all of the data
        let mut out = Vec::new();
        let r = reframe(&mut ChunkedScanner::default(), body, &mut out);
        assert_eq!(r, Ok((12, Scan::Done(body.len() - 4))));
        assert_eq!(out, b"c\r\nhello, world\r\n0\r\n\r\n");
        // a piece of framing only adds nothing, and a bad one is refused
        let mut s = ChunkedScanner::default();
        out.clear();
        assert_eq!(reframe(&mut s, b"5;ext", &mut out), Ok((0, Scan::More)));
        assert!(out.is_empty());
        assert!(reframe(&mut s, b"\x01", &mut out).is_err());
    }

    /// Scan `body` in pieces of `split`, coalescing each piece as the request guard does.
    fn coalesced(body: &[u8], split: usize) -> Vec<u8> {
        let (mut s, mut spans, mut out) = (ChunkedScanner::default(), Vec::new(), Vec::new());
        for piece in body.chunks(split) {
            let mut p = piece.to_vec();
            s.scan_spans(&p, &mut spans).unwrap();
            let n = coalesce(&mut p, &spans);
            out.extend_from_slice(&p[..n]);
        }
        out
    }

    #[test]
    fn coalescing_keeps_the_data_in_any_split() {
        let mut body = b"5\r\nhello\r\n3;x=y\r\n, w\r\n".to_vec();
        for _ in 0..40 {
            body.extend_from_slice(b"1\r\n.\r\n");
        }
        body.extend_from_slice(b"20\r\n0123456789abcdef0123456789ABCDEF\r\n4\r\norld\r\n");
        body.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
        let mut want = Vec::new();
        assert_eq!(
            ChunkedScanner::default().scan_into(&body, Some(&mut want)),
            Ok(Scan::Done(body.len()))
        );
        for split in 1..=body.len() {
            let out = coalesced(&body, split);
            assert!(out.len() <= body.len(), "split {split}");
            let mut got = Vec::new();
            let mut s = ChunkedScanner::default();
            assert_eq!(
                s.scan_into(&out, Some(&mut got)),
                Ok(Scan::Done(out.len())),
                "split {split}: {}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(got, want, "split {split}");
            assert!(out.ends_with(b"0\r\nx-t: 1\r\n\r\n"), "trailers kept");
        }
    }

    #[test]
    fn a_read_of_tiny_chunks_becomes_one_chunk() {
        let mut body = Vec::new();
        for _ in 0..1000 {
            body.extend_from_slice(b"1\r\nz\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let mut want = b"3e8\r\n".to_vec();
        want.extend_from_slice(&[b'z'; 1000]);
        want.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(coalesced(&body, body.len()), want);
        // the guard holds one span per chunk of a read while it merges them
        assert_eq!(std::mem::size_of::<Span>(), 12);
        // a lone whole chunk, and one split across reads, stay as they came
        assert_eq!(
            coalesced(b"3;a\r\nabc\r\n0\r\n\r\n", 100),
            b"3;a\r\nabc\r\n0\r\n\r\n"
        );
        assert_eq!(
            coalesced(b"1\r\na\r\n2\r\nbc\r\n", 8),
            b"1\r\na\r\n2\r\nbc\r\n"
        );
        // chunks of a kilobyte or more are not moved; the small ones beside them still merge
        let big = |c: u8| [b"400\r\n".to_vec(), vec![c; 1024], b"\r\n".to_vec()].concat();
        let body = [
            big(b'a'),
            big(b'b'),
            b"1\r\nx\r\n1\r\ny\r\n0\r\n\r\n".to_vec(),
        ]
        .concat();
        let want = [big(b'a'), big(b'b'), b"2\r\nxy\r\n0\r\n\r\n".to_vec()].concat();
        assert_eq!(coalesced(&body, body.len()), want);
    }

    #[test]
    fn hex_sizes() {
        for (n, s) in [
            (1, "1"),
            (15, "f"),
            (16, "10"),
            (0x3e8, "3e8"),
            (MAX_MERGED, "ffffff"),
            (usize::MAX, "ffffffffffffffff"),
        ] {
            let mut line = [0; SIZE_LINE];
            let len = size_line(n, &mut line);
            assert_eq!(&line[..len], format!("{s}\r\n").as_bytes());
        }
    }

    #[test]
    fn refuses_bad_framing() {
        assert!(whole(b"zz\r\n").is_err());
        assert!(whole(b"\r\n").is_err());
        assert!(whole(b"3\r\nabcX").is_err());
        assert!(whole(b"3\nabc").is_err());
        assert!(whole(b"fffffffffffffffff\r\n").is_err());
        assert!(whole(b"0\r\n\rX").is_err());
        assert_eq!(whole(b"0\r\n"), Ok(Scan::More));
        // RFC 9112 7.1.1: extensions and trailers hold no control bytes, trailers are fields
        assert!(whole(b"3;a\nb\r\nabc\r\n0\r\n\r\n").is_err());
        assert!(whole(b"3;a\0b\r\nabc\r\n0\r\n\r\n").is_err());
        assert!(
            whole(format!("3;{}\r\nabc\r\n0\r\n\r\n", "x".repeat(10 << 10)).as_bytes()).is_err()
        );
        assert!(whole(b"0\r\nX-T\x01: 1\r\n\r\n").is_err());
        assert!(whole(b"0\r\nno colon\r\n\r\n").is_err());
        assert!(whole(b"0\r\nX-T: a\x7fb\r\n\r\n").is_err());
        assert!(whole(b"0\r\n: v\r\n\r\n").is_err());
        assert_eq!(
            whole(b"3;a=\"q s\"\r\nabc\r\n0\r\nX-T: v w\r\n\r\n"),
            Ok(Scan::Done(31))
        );
        assert_eq!(whole(b"0\r\n\r\n"), Ok(Scan::Done(5)));
    }
}
