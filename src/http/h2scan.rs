//! Where a client's HTTP/2 byte stream stands between reads: at a frame boundary, or inside
//! a request's header block.
//!
//! The h2 codec hands a stream over only once its header block is complete, and says
//! nothing about one still arriving. A client that sends a HEADERS frame a few bytes at a
//! time, or a HEADERS frame without END_HEADERS and then no CONTINUATION, would hold its
//! connection until `keepalive_timeout`: the HTTP/2 form of a slow head, which on HTTP/1 the
//! guard cuts at `header_timeout`. The guard feeds this scanner the bytes h2 reads (frame
//! headers only: a frame's payload is skipped by its length), and runs the same deadline
//! while the bytes stop inside a header block.
//!
//! Only a DATA frame may be left half-sent for long (a body uploading over a slow link, paced
//! by flow control and bounded by `client_timeout`); a control frame is a few bytes that a
//! client writes whole. So a read that stops inside any frame but DATA, or inside a frame's
//! 9-byte header, counts as stopping inside headers too.

/// The client connection preface (RFC 9113 §3.4), which comes before the first frame.
const PREFACE_LEN: u8 = 24;
const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

#[derive(Debug, Clone, Default)]
pub struct H2Scanner {
    /// Bytes of the preface still to come.
    preface_left: u8,
    /// A frame header split across reads.
    head: [u8; FRAME_HEADER_LEN],
    head_len: u8,
    /// The current frame's type and the bytes of its payload still to come.
    kind: u8,
    payload_left: u32,
    /// A HEADERS (or PUSH_PROMISE) frame came without END_HEADERS: its CONTINUATION frames
    /// are still to come.
    block_open: bool,
}

impl H2Scanner {
    /// For a stream that starts with the client preface.
    pub fn new() -> H2Scanner {
        H2Scanner {
            preface_left: PREFACE_LEN,
            ..H2Scanner::default()
        }
    }

    /// The next bytes the client sent, in any split. Returns whether the stream was outside
    /// headers at some point in them (or before them): a header block still open at their
    /// end is then a new one, whose time starts now.
    pub fn feed(&mut self, mut b: &[u8]) -> bool {
        let mut outside = !self.in_headers();
        if self.preface_left > 0 {
            let n = b.len().min(self.preface_left as usize);
            self.preface_left -= n as u8;
            b = &b[n..];
        }
        while !b.is_empty() {
            outside |= !self.in_headers();
            if self.payload_left > 0 {
                let n = b.len().min(self.payload_left as usize);
                self.payload_left -= n as u32;
                b = &b[n..];
                continue;
            }
            let at = self.head_len as usize;
            if at == 0 && b.len() >= FRAME_HEADER_LEN {
                // the whole header in this read, as nearly always: no copy
                self.frame(header(&b[..FRAME_HEADER_LEN]));
                b = &b[FRAME_HEADER_LEN..];
                continue;
            }
            let n = b.len().min(FRAME_HEADER_LEN - at);
            self.head[at..at + n].copy_from_slice(&b[..n]);
            self.head_len += n as u8;
            b = &b[n..];
            if self.head_len as usize == FRAME_HEADER_LEN {
                self.head_len = 0;
                let h = self.head;
                self.frame(header(&h));
            }
        }
        outside | !self.in_headers()
    }

    /// A frame's header, complete.
    fn frame(&mut self, (len, kind, flags): (u32, u8, u8)) {
        self.kind = kind;
        self.payload_left = len;
        match kind {
            HEADERS | PUSH_PROMISE => self.block_open = flags & END_HEADERS == 0,
            CONTINUATION => self.block_open = self.block_open && flags & END_HEADERS == 0,
            // Any other frame inside a header block is a connection error that h2 reports;
            // the block stays open here, which only makes the deadline stricter.
            _ => {}
        }
    }

    /// Whether the bytes so far stop inside a header block (or a preface, a frame header or
    /// a control frame): the client owes the rest, and the header deadline runs.
    pub fn in_headers(&self) -> bool {
        (self.preface_left > 0 && self.preface_left < PREFACE_LEN)
            || self.head_len > 0
            || (self.payload_left > 0 && self.kind != DATA)
            || self.block_open
    }
}

/// Length, type and flags from a frame header (RFC 9113 §4.1).
fn header(h: &[u8]) -> (u32, u8, u8) {
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
    (len, h[3], h[4])
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags, 0, 0, 0, 1]);
        f.extend(payload);
        f
    }

    /// Every split of `bytes` in two reads gives the same answer at the end, and `mid` for
    /// every cut inside (checked at each cut).
    fn all_splits(bytes: &[u8], end: bool) {
        for cut in 0..=bytes.len() {
            let mut s = H2Scanner::new();
            s.feed(&bytes[..cut]);
            s.feed(&bytes[cut..]);
            assert_eq!(s.in_headers(), end, "cut at {cut}");
        }
    }

    #[test]
    fn whole_frames_leave_the_stream_at_a_boundary_in_any_split() {
        let mut b = PREFACE.to_vec();
        b.extend(frame(0x4, 0, &[0, 4, 0, 0, 0, 0])); // SETTINGS
        b.extend(frame(HEADERS, END_HEADERS | 0x1, &[0x82, 0x84, 0x86]));
        b.extend(frame(0x6, 0, &[0; 8])); // PING
        all_splits(&b, false);
    }

    #[test]
    fn a_read_that_stops_inside_a_headers_frame_or_its_header_is_inside_headers() {
        let mut b = PREFACE.to_vec();
        b.extend(frame(HEADERS, END_HEADERS, &[0x82; 40]));
        let start = PREFACE.len();
        for cut in start + 1..b.len() {
            let mut s = H2Scanner::new();
            s.feed(&b[..cut]);
            assert!(s.in_headers(), "cut at {cut}");
        }
        let mut s = H2Scanner::new();
        s.feed(&b);
        assert!(!s.in_headers());
    }

    #[test]
    fn a_header_block_stays_open_until_a_continuation_ends_it() {
        let mut s = H2Scanner::new();
        s.feed(PREFACE);
        s.feed(&frame(HEADERS, 0, &[0x82; 10]));
        assert!(s.in_headers(), "HEADERS without END_HEADERS");
        s.feed(&frame(CONTINUATION, 0, &[0x84; 10]));
        assert!(s.in_headers(), "CONTINUATION without END_HEADERS");
        s.feed(&frame(CONTINUATION, END_HEADERS, &[0x86; 10]));
        assert!(!s.in_headers(), "the block ended");
        let mut b = PREFACE.to_vec();
        b.extend(frame(HEADERS, 0, &[0x82; 10]));
        b.extend(frame(CONTINUATION, END_HEADERS, &[0x86; 10]));
        all_splits(&b, false);
    }

    #[test]
    fn a_data_frame_left_half_sent_is_a_body_not_headers() {
        let mut s = H2Scanner::new();
        s.feed(PREFACE);
        let f = frame(DATA, 0, &[7; 1000]);
        s.feed(&f[..500]);
        assert!(!s.in_headers());
        s.feed(&f[500..]);
        assert!(!s.in_headers());
    }

    #[test]
    fn a_partial_preface_is_inside_headers_and_none_yet_is_not() {
        let mut s = H2Scanner::new();
        assert!(!s.in_headers());
        s.feed(&PREFACE[..10]);
        assert!(s.in_headers());
        s.feed(&PREFACE[10..]);
        assert!(!s.in_headers());
    }

    #[test]
    fn a_new_header_block_after_a_finished_one_is_reported_as_new() {
        let mut s = H2Scanner::new();
        s.feed(PREFACE);
        let a = frame(HEADERS, END_HEADERS, &[0x82; 20]);
        // stops inside the first block: nothing outside headers since the preface
        assert!(s.feed(&a[..12]));
        assert!(!s.feed(&a[12..15]), "still the same block");
        let mut rest = a[15..].to_vec();
        rest.extend(&a[..12]);
        assert!(s.feed(&rest), "the first block ended, a second began");
        assert!(s.in_headers());
    }

    #[test]
    fn a_frame_length_of_the_full_24_bits_is_skipped_without_overflow() {
        let mut s = H2Scanner::new();
        s.feed(PREFACE);
        s.feed(&[0xff, 0xff, 0xff, DATA, 0, 0, 0, 0, 1]);
        s.feed(&[0; 4096]);
        assert!(!s.in_headers());
        assert_eq!(s.payload_left, 0xff_ffff - 4096);
    }
}
