//! The PROXY protocol (HAProxy's spec, versions 1 and 2): parsing what a trusted load
//! balancer in front sends us, and encoding what we send to backends.
//!
//! The parser is a pure function over a byte slice that answers "incomplete", "done after N
//! bytes" or an error, so it is unit-testable and cannot panic on hostile input (all indexing
//! is through `get`). [`read_header`] drives it over a socket in a few large reads and returns
//! any bytes that came after the header, which the caller pushes back into Pingora's stream
//! (`rewind`) before handing it on to the HTTP engine, a TLS handshake or the L4 splice.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIG: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// The spec's bound on a v1 line, CRLF included.
pub const V1_MAX: usize = 107;
/// Largest v2 address-and-TLV block we accept. The spec allows 64 KiB; real balancers send
/// a few hundred bytes at most, and a bound keeps a hostile peer from making us buffer more.
pub const V2_MAX_BODY: usize = 4096;
/// The shortest possible header is `PROXY UNKNOWN\r\n`.
const MIN_HEADER: usize = 15;
/// Bytes asked for per read: a v1 line, or a v2 header with a few TLVs.
const READ_CHUNK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The sender speaks for itself (v1 `UNKNOWN`, v2 `LOCAL`, or an address family we do not
    /// use such as AF_UNIX): keep the socket's own peer address.
    Local,
    Proxy {
        src: SocketAddr,
        dst: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed; at least this many in total.
    Incomplete(usize),
    /// A full header, `len` bytes long.
    Done(Header, usize),
}

/// Parse a v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, &'static str> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete(MIN_HEADER));
    }
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        return parse_v2(buf);
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return parse_v1(buf);
    }
    Err("not a PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, &'static str> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err("PROXY v1 line longer than 107 bytes");
        }
        return Ok(Parsed::Incomplete(buf.len() + 1));
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "PROXY v1 line is not ASCII")?;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let header = match parts.next() {
        Some("UNKNOWN") => Header::Local,
        Some(fam @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err("PROXY v1 line needs four fields after the family");
            };
            let (src, dst): (IpAddr, IpAddr) = if fam == "TCP4" {
                (
                    src.parse::<Ipv4Addr>()
                        .map_err(|_| "bad IPv4 source")?
                        .into(),
                    dst.parse::<Ipv4Addr>()
                        .map_err(|_| "bad IPv4 destination")?
                        .into(),
                )
            } else {
                (
                    src.parse::<Ipv6Addr>()
                        .map_err(|_| "bad IPv6 source")?
                        .into(),
                    dst.parse::<Ipv6Addr>()
                        .map_err(|_| "bad IPv6 destination")?
                        .into(),
                )
            };
            Header::Proxy {
                src: SocketAddr::new(src, port(sport)?),
                dst: SocketAddr::new(dst, port(dport)?),
            }
        }
        _ => return Err("PROXY v1 family must be TCP4, TCP6 or UNKNOWN"),
    };
    Ok(Parsed::Done(header, end + 2))
}

fn port(s: &str) -> Result<u16, &'static str> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("bad port");
    }
    s.parse().map_err(|_| "bad port")
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, &'static str> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete(16));
    }
    let ver_cmd = buf[12];
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err("PROXY v2 version must be 2");
    }
    if len > V2_MAX_BODY {
        return Err("PROXY v2 header too long");
    }
    let total = 16 + len;
    let Some(body) = buf.get(16..total) else {
        return Ok(Parsed::Incomplete(total));
    };
    let header = match ver_cmd & 0x0F {
        0 => Header::Local,
        1 => match fam >> 4 {
            // AF_INET
            1 => {
                let b = body.get(..12).ok_or("PROXY v2 IPv4 block too short")?;
                let ip = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
                Header::Proxy {
                    src: SocketAddr::new(ip(0).into(), u16::from_be_bytes([b[8], b[9]])),
                    dst: SocketAddr::new(ip(4).into(), u16::from_be_bytes([b[10], b[11]])),
                }
            }
            // AF_INET6
            2 => {
                let b = body.get(..36).ok_or("PROXY v2 IPv6 block too short")?;
                let ip = |o: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&b[o..o + 16]);
                    Ipv6Addr::from(a)
                };
                Header::Proxy {
                    src: SocketAddr::new(ip(0).into(), u16::from_be_bytes([b[32], b[33]])),
                    dst: SocketAddr::new(ip(16).into(), u16::from_be_bytes([b[34], b[35]])),
                }
            }
            // AF_UNSPEC, AF_UNIX: nothing we can use as a client address.
            0 | 3 => Header::Local,
            _ => return Err("PROXY v2 unknown address family"),
        },
        _ => return Err("PROXY v2 command must be LOCAL or PROXY"),
    };
    Ok(Parsed::Done(header, total))
}

/// `PROXY TCP4 src dst sport dport\r\n`. Mixed families (an IPv4 client on an IPv6
/// listener) are sent as TCP6 with the IPv4 side mapped.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            format!("PROXY TCP4 {s} {d} {} {}\r\n", src.port(), dst.port()).into_bytes()
        }
        (s, d) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            v6(s),
            v6(d),
            src.port(),
            dst.port()
        )
        .into_bytes(),
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// v2 binary header, command PROXY, STREAM over INET or INET6, no TLVs.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIG);
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

pub fn encode(version: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match version {
        Version::V1 => encode_v1(src, dst),
        Version::V2 => encode_v2(src, dst),
    }
}

/// Read one header from `r`. Reads are a few hundred bytes at a time (one syscall in the
/// usual case, where the header and the first bytes of the payload arrive together), so they
/// may take in bytes after the header: those are returned for the caller to push back into
/// the stream. The caller bounds the time.
pub async fn read_header<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> std::io::Result<(Header, Vec<u8>)> {
    let bad = |m: &'static str| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match parse(&buf).map_err(bad)? {
            Parsed::Done(h, len) => return Ok((h, buf.split_off(len))),
            Parsed::Incomplete(_) => {
                let n = r.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_round_trip_and_prefixes() {
        let h = encode_v1(sa("192.0.2.1:5555"), sa("10.0.0.1:443"));
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 10.0.0.1 5555 443\r\n");
        let want = Header::Proxy {
            src: sa("192.0.2.1:5555"),
            dst: sa("10.0.0.1:443"),
        };
        assert_eq!(parse(&h), Ok(Parsed::Done(want, h.len())));
        for i in 0..h.len() {
            assert!(
                matches!(parse(&h[..i]), Ok(Parsed::Incomplete(_))),
                "prefix {i}"
            );
        }
        let mut more = h.clone();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse(&more), Ok(Parsed::Done(want, h.len())));
    }

    #[test]
    fn v1_ipv6_unknown_and_mixed() {
        let h = encode_v1(sa("[2001:db8::1]:1"), sa("[::1]:2"));
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n");
        assert!(matches!(
            parse(&h),
            Ok(Parsed::Done(Header::Proxy { .. }, _))
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parsed::Done(Header::Local, 15))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"),
            Ok(Parsed::Done(Header::Local, 35))
        );
        let m = encode_v1(sa("192.0.2.1:1"), sa("[::1]:2"));
        assert_eq!(m, b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n");
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",
            b"GET / HTTP/1.1\r\n",
            b"proxy TCP4",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long).is_err());
    }

    #[test]
    fn v2_round_trip() {
        for (s, d) in [
            ("192.0.2.1:5555", "10.0.0.1:443"),
            ("[2001:db8::7]:80", "[::1]:8443"),
        ] {
            let h = encode_v2(sa(s), sa(d));
            let want = Header::Proxy {
                src: sa(s),
                dst: sa(d),
            };
            assert_eq!(parse(&h), Ok(Parsed::Done(want, h.len())));
            for i in 0..h.len() {
                assert!(
                    matches!(parse(&h[..i]), Ok(Parsed::Incomplete(_))),
                    "prefix {i}"
                );
            }
        }
    }

    #[test]
    fn v2_local_tlvs_and_malformed() {
        let mut local = V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&local), Ok(Parsed::Done(Header::Local, 16)));

        // IPv4 addresses followed by a TLV the parser skips.
        let mut tlv = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        tlv[15] = 12 + 5;
        tlv.extend_from_slice(&[0x04, 0x00, 0x02, 0xAA, 0xBB]);
        assert!(matches!(
            parse(&tlv),
            Ok(Parsed::Done(Header::Proxy { .. }, 33))
        ));

        let mut v = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        v[12] = 0x11; // version 1 in the binary format
        assert!(parse(&v).is_err());
        let mut c = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        c[12] = 0x22; // command 2
        assert!(parse(&c).is_err());
        let mut short = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        short[15] = 4; // claims 4 bytes, IPv4 needs 12
        assert!(parse(&short[..20]).is_err());
        let mut huge = V2_SIG.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert!(parse(&huge).is_err());
        let mut fam = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        fam[13] = 0x41;
        assert!(parse(&fam).is_err());
    }

    /// A reader that hands out one byte per read, like a header arriving in pieces.
    fn tokio_test_reader(data: &[u8]) -> impl AsyncRead + Unpin + '_ {
        struct Trickle<'a>(&'a [u8]);
        impl AsyncRead for Trickle<'_> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if let Some((&b, rest)) = self.0.split_first() {
                    buf.put_slice(&[b]);
                    self.0 = rest;
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        Trickle(data)
    }

    #[tokio::test]
    async fn read_header_returns_what_follows_the_header() {
        for h in [
            encode_v1(sa("192.0.2.1:5555"), sa("10.0.0.1:443")),
            encode_v2(sa("192.0.2.1:5555"), sa("10.0.0.1:443")),
            b"PROXY UNKNOWN\r\n".to_vec(),
        ] {
            let mut data = h.clone();
            data.extend_from_slice(b"payload");
            // one byte per read, and all at once
            let mut trickle = tokio_test_reader(&data);
            let (_, rest) = read_header(&mut trickle).await.unwrap();
            let mut tail = rest;
            trickle.read_to_end(&mut tail).await.unwrap();
            assert_eq!(tail, b"payload");
            let mut r = &data[..];
            let (_, rest) = read_header(&mut r).await.unwrap();
            assert_eq!([rest.as_slice(), r].concat(), b"payload");
        }
        let mut r = &b"PROXY TCP4 1.2.3.4"[..];
        assert!(read_header(&mut r).await.is_err());
        let mut r = &b"SSH-2.0-OpenSSH_9.6\r\n"[..];
        assert!(read_header(&mut r).await.is_err());
    }
}
