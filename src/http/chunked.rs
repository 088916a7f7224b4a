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
    pub fn scan_into(
        &mut self,
        data: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<Scan, BadChunk> {
        let mut i = 0;
        self.trailers_at = None;
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
                        self.state = State::Data { left: self.size };
                    }
                }
                State::Data { left } => {
                    let avail = (data.len() - i) as u64;
                    let take = avail.min(left) as usize;
                    if let Some(o) = out.as_deref_mut() {
                        o.extend_from_slice(&data[i..i + take]);
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
                    self.size = 0;
                    self.state = State::Size { digits: 0 };
                    i += 1;
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
