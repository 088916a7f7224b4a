//! The PROXY protocol v1/v2 parser, on bytes as a trusted balancer (or anyone who reaches a
//! listener with `accept_proxy_protocol`) might send them.
//!
//! Besides "no panic", it checks what the socket reader relies on: a header is never longer
//! than the input, "incomplete" always asks for more than it has, and the answer does not
//! depend on how TCP split the bytes (an error or a header seen in a prefix stays the same
//! when more bytes arrive). It also round-trips addresses through our own encoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use stepstone::config::cidr::canonical;
use stepstone::l4::proxy_protocol::{encode_v1, encode_v2, parse, Header, Parsed};

fn check(buf: &[u8]) -> Result<Parsed, &'static str> {
    let r = parse(buf);
    match r {
        Ok(Parsed::Done(_, len)) => assert!(len <= buf.len() && len > 0),
        Ok(Parsed::Incomplete(n)) => {
            assert!(n > buf.len(), "incomplete({n}) with {} bytes", buf.len())
        }
        Err(_) => {}
    }
    r
}

fn addr(b: &[u8], v6: bool, port: u16) -> SocketAddr {
    let ip: IpAddr = if v6 {
        let mut a = [0u8; 16];
        for (d, s) in a.iter_mut().zip(b) {
            *d = *s;
        }
        Ipv6Addr::from(a).into()
    } else {
        let mut a = [0u8; 4];
        for (d, s) in a.iter_mut().zip(b) {
            *d = *s;
        }
        Ipv4Addr::from(a).into()
    };
    SocketAddr::new(ip, port)
}

fn canon(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

fuzz_target!(|data: &[u8]| {
    let full = check(data);
    // Every split point a reader could see (bounded: the parser looks at 4 KiB at most).
    for cut in 0..data.len().min(200) {
        match check(&data[..cut]) {
            Err(e) => assert!(
                full.is_err(),
                "prefix of {cut} bytes failed ({e}) but the whole parsed: {full:?}"
            ),
            Ok(Parsed::Done(h, len)) => assert_eq!(full, Ok(Parsed::Done(h, len))),
            Ok(Parsed::Incomplete(_)) => {}
        }
    }

    // Round trip: whatever addresses we encode for a backend, we parse back.
    if data.len() >= 38 {
        let v6s = data[0] & 1 == 1;
        let v6d = data[0] & 2 == 2;
        let src = addr(&data[2..18], v6s, u16::from_be_bytes([data[34], data[35]]));
        let dst = addr(&data[18..34], v6d, u16::from_be_bytes([data[36], data[37]]));
        for enc in [encode_v1(src, dst), encode_v2(src, dst)] {
            let tail = &data[38..];
            let mut wire = enc.clone();
            wire.extend_from_slice(tail);
            match parse(&wire) {
                Ok(Parsed::Done(Header::Proxy { src: s, dst: d }, len)) => {
                    assert_eq!(len, enc.len());
                    assert_eq!(canon(s), canon(src));
                    assert_eq!(canon(d), canon(dst));
                }
                other => panic!("our own header {enc:?} parsed as {other:?}"),
            }
        }
    }
});
