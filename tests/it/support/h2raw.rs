//! HTTP/2 frames written by hand, for requests no well-behaved client library will send
//! (a bad `:path` or `:method`, a CONTINUATION flood). Header blocks use HPACK literals
//! without indexing or Huffman coding, so any bytes can be sent; responses are read far
//! enough to tell a status, a stream reset, GOAWAY or a close apart.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 1;
pub const END_HEADERS: u8 = 4;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK's (and QPACK's) prefixed integer: `first`'s bits above the `prefix_bits` prefix.
pub fn hpack_int(out: &mut Vec<u8>, prefix_bits: u8, first: u8, mut n: usize) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A header block of literal fields (never indexed, no Huffman coding).
pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.push(0x00);
        hpack_int(&mut out, 7, 0, k.len());
        out.extend_from_slice(k);
        hpack_int(&mut out, 7, 0, v.len());
        out.extend_from_slice(v);
    }
    out
}

/// What came back for a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    Reset(u32),
    GoAway(u32),
    Closed,
    Nothing,
}

/// Connect, send the preface and an empty SETTINGS frame.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect h2c");
    s.set_nodelay(true).expect("nodelay");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.expect("preface");
    s
}

/// One frame read whole.
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// What one read of a frame came to.
pub enum Read {
    Frame(Frame),
    /// The connection closed (or failed).
    Closed,
    /// `deadline` passed first.
    Late,
}

/// Read the next frame, whole, before `deadline`.
pub async fn read_frame(s: &mut TcpStream, deadline: tokio::time::Instant) -> Read {
    let mut h = [0u8; 9];
    match tokio::time::timeout_at(deadline, s.read_exact(&mut h)).await {
        Err(_) => return Read::Late,
        Ok(Err(_)) => return Read::Closed,
        Ok(Ok(_)) => {}
    }
    let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
    let mut payload = vec![0u8; len];
    match tokio::time::timeout_at(deadline, s.read_exact(&mut payload)).await {
        Err(_) => return Read::Late,
        Ok(Err(_)) => return Read::Closed,
        Ok(Ok(_)) => {}
    }
    Read::Frame(Frame {
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Read frames until stream `id` gets a status, a reset, or the connection a GOAWAY or EOF.
pub async fn outcome(s: &mut TcpStream, id: u32, wait: Duration) -> Outcome {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Frame {
            kind,
            flags,
            stream,
            payload: p,
        } = match read_frame(s, deadline).await {
            Read::Frame(f) => f,
            Read::Closed => return Outcome::Closed,
            Read::Late => return Outcome::Nothing,
        };
        match kind {
            SETTINGS if flags & 1 == 0 => {
                let _ = s.write_all(&frame(SETTINGS, 1, 0, &[])).await;
            }
            HEADERS if stream == id => {
                let mut b = &p[..];
                if flags & 0x8 != 0 {
                    // padded
                    let pad = b[0] as usize;
                    b = &b[1..b.len().saturating_sub(pad)];
                }
                if flags & 0x20 != 0 {
                    b = &b[5.min(b.len())..];
                }
                if let Some(st) = status(b) {
                    return Outcome::Status(st);
                }
                return Outcome::Status(0);
            }
            RST_STREAM if stream == id && p.len() >= 4 => {
                return Outcome::Reset(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
            }
            GOAWAY if p.len() >= 8 => {
                return Outcome::GoAway(u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
            }
            _ => {}
        }
    }
}

/// The `:status` of a response header block, when it is its first field (as servers send
/// it): an indexed static entry, or a literal with a static `:status` name.
pub fn status(b: &[u8]) -> Option<u16> {
    let first = *b.first()?;
    let statics = [200u16, 204, 206, 304, 400, 404, 500];
    if first & 0x80 != 0 {
        let i = (first & 0x7f) as usize;
        return (8..=14).contains(&i).then(|| statics[i - 8]);
    }
    let (idx, rest) = if first & 0x40 != 0 {
        ((first & 0x3f) as usize, &b[1..])
    } else {
        ((first & 0x0f) as usize, &b[1..])
    };
    if !(8..=14).contains(&idx) {
        return None;
    }
    let lb = *rest.first()?;
    let len = (lb & 0x7f) as usize;
    let v = rest.get(1..1 + len)?;
    let text = if lb & 0x80 != 0 {
        huffman_digits(v)?
    } else {
        String::from_utf8(v.to_vec()).ok()?
    };
    text.parse().ok()
}

/// HPACK Huffman decoding for the digits, enough for a status code.
fn huffman_digits(v: &[u8]) -> Option<String> {
    // (code, bits) for '0'..='9' from RFC 7541 Appendix B
    let codes: [(u32, u32); 10] = [
        (0x0, 5),
        (0x1, 5),
        (0x2, 5),
        (0x19, 6),
        (0x1a, 6),
        (0x1b, 6),
        (0x1c, 6),
        (0x1d, 6),
        (0x1e, 6),
        (0x1f, 6),
    ];
    let bits: Vec<u32> = v
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| u32::from((b >> i) & 1)))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    'outer: while i < bits.len() {
        for (d, (code, n)) in codes.iter().enumerate() {
            let n = *n as usize;
            if i + n <= bits.len() {
                let c = bits[i..i + n].iter().fold(0u32, |a, b| a << 1 | b);
                if c == *code {
                    out.push((b'0' + d as u8) as char);
                    i += n;
                    continue 'outer;
                }
            }
        }
        // padding: the rest must be all ones
        if bits[i..].iter().all(|b| *b == 1) && bits.len() - i < 8 {
            break;
        }
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_statuses() {
        assert_eq!(super::status(&[0x88]), Some(200));
        assert_eq!(super::status(&[0x8c]), Some(400));
        assert_eq!(super::status(&[0x48, 3, b'5', b'0', b'2']), Some(502));
        // "502" Huffman: 011011 00000 00010 + padding 11111111 -> 0110 1100 0000 0010
        assert_eq!(super::status(&[0x48, 0x82, 0x6c, 0x02]), Some(502));
    }
}
