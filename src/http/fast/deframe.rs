//! A backend's HTTP/1 response body taken off its framing, for the engines that frame it
//! anew (HTTP/2 and HTTP/3 clients).
//!
//! Both engines read the body from the backend in pieces: first the bytes that came in the
//! same read as the head, then each read. What a piece holds of the body, when the body has
//! ended, and whether the backend connection may go back to the pool are the same question
//! for both, answered here once; the engines only move the bytes and decide what a bad
//! chunked body costs at their point of the exchange.

use super::response::Framing;
use crate::http::chunked::{BadChunk, ChunkedScanner, Scan};

/// One response body's framing state.
pub struct Deframe {
    framing: Framing,
    /// What a length-delimited body still lacks.
    left: u64,
    scanner: ChunkedScanner,
    keep: bool,
    done: bool,
}

impl Deframe {
    /// A body framed as `framing`; `keep`: whether the head lets the backend connection be
    /// reused. Nothing is done until the first piece, even for a body-less response (the
    /// first piece then tells whether the backend sent bytes it should not have).
    pub fn new(framing: Framing, keep: bool) -> Deframe {
        Deframe {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            scanner: ChunkedScanner::default(),
            keep,
            done: false,
        }
    }

    /// Take the body's bytes in `piece` (bytes read from the backend) into `out`, without
    /// their framing. Bytes past the body's end are not the body's: they make the
    /// connection not reusable.
    pub fn take(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), BadChunk> {
        let n = piece.len();
        match self.framing {
            Framing::None => {
                self.keep &= n == 0;
                self.done = true;
            }
            Framing::Length(_) => {
                let t = (n as u64).min(self.left);
                self.left -= t;
                self.keep &= n as u64 == t;
                self.done = self.left == 0;
                out.extend_from_slice(&piece[..t as usize]);
            }
            Framing::Chunked => {
                if let Scan::Done(k) = self.scanner.scan_into(piece, Some(out))? {
                    self.keep &= k == n;
                    self.done = true;
                }
            }
            Framing::Close => out.extend_from_slice(piece),
        }
        Ok(())
    }

    /// The backend closed its connection: the end of a close-delimited body (a read of the
    /// other framings fails instead), and the connection is not reused.
    pub fn closed(&mut self) {
        self.keep = false;
        self.done = true;
    }

    /// Whether the body has ended.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Whether the backend connection may go back to the pool (once the body is done).
    pub fn keep(&self) -> bool {
        self.keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` in turn; the body taken out, whether it ended, and whether the
    /// connection may be kept.
    fn run(framing: Framing, pieces: &[&[u8]]) -> (Vec<u8>, bool, bool) {
        let mut d = Deframe::new(framing, true);
        let mut out = Vec::new();
        for p in pieces {
            assert!(!d.done(), "a piece fed after the end");
            d.take(p, &mut out).expect("framing");
        }
        (out, d.done(), d.keep())
    }

    #[test]
    fn a_body_less_response_ends_at_once_and_stray_bytes_lose_the_connection() {
        assert_eq!(run(Framing::None, &[b""]), (vec![], true, true));
        assert_eq!(run(Framing::None, &[b"x"]), (vec![], true, false));
    }

    #[test]
    fn a_length_body_ends_at_its_length_across_pieces() {
        assert_eq!(
            run(Framing::Length(5), &[b"he"]),
            (b"he".to_vec(), false, true)
        );
        assert_eq!(
            run(Framing::Length(5), &[b"he", b"llo"]),
            (b"hello".to_vec(), true, true)
        );
        assert_eq!(
            run(Framing::Length(5), &[b"", b"hello"]),
            (b"hello".to_vec(), true, true)
        );
    }

    #[test]
    fn bytes_past_a_length_body_are_dropped_with_the_connection() {
        assert_eq!(
            run(Framing::Length(5), &[b"hel", b"loEXTRA"]),
            (b"hello".to_vec(), true, false)
        );
        assert_eq!(run(Framing::Length(0), &[b"x"]), (vec![], true, false));
    }

    #[test]
    fn a_chunked_body_is_decoded_across_pieces_and_ends_at_its_last_chunk() {
        let (out, done, keep) = run(Framing::Chunked, &[b"5\r\nhel", b"lo\r\n0\r\n\r\n"]);
        assert_eq!((out.as_slice(), done, keep), (&b"hello"[..], true, true));
        let (out, done, keep) = run(Framing::Chunked, &[b"5\r\nhello\r\n0\r\n\r\nGET"]);
        assert_eq!((out.as_slice(), done, keep), (&b"hello"[..], true, false));
        let (_, done, _) = run(Framing::Chunked, &[b"5\r\nhello\r\n"]);
        assert!(!done);
    }

    #[test]
    fn a_bad_chunk_is_an_error() {
        let mut d = Deframe::new(Framing::Chunked, true);
        assert!(d.take(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn a_close_delimited_body_ends_when_the_backend_closes() {
        let mut d = Deframe::new(Framing::Close, true);
        let mut out = Vec::new();
        d.take(b"abc", &mut out).expect("close framing");
        assert!(!d.done());
        d.closed();
        assert_eq!(
            (out.as_slice(), d.done(), d.keep()),
            (&b"abc"[..], true, false)
        );
    }

    #[test]
    fn a_head_that_forbids_reuse_is_never_overridden() {
        let mut d = Deframe::new(Framing::Length(2), false);
        d.take(b"ok", &mut Vec::new()).expect("length framing");
        assert!(d.done() && !d.keep());
    }
}
