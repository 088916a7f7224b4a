//! Reading the server name (SNI) from a TLS ClientHello without terminating TLS.
//!
//! [`parse_client_hello`] is a pure function over the bytes received so far. It reassembles
//! the handshake message from as many TLS records as it spans (large post-quantum key shares
//! push a ClientHello past one record), and answers "need more bytes", "done" with the name
//! (or none) or an error. Every read goes through a bounds-checked [`Reader`], so truncated
//! or hostile input is an error, never a panic. The caller bounds total size and time.

/// TLS record content type `handshake`.
const HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello`.
const CLIENT_HELLO: u8 = 1;
/// RFC 8446: a plaintext record carries at most 2^14 bytes.
const MAX_RECORD: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet.
    Incomplete,
    /// A complete ClientHello; the lower-cased host name, if it sent one.
    Done(Option<String>),
}

/// A cursor that fails instead of panicking when the input runs out.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self.buf.get(self.pos..end).ok_or("truncated ClientHello")?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Result<usize, &'static str> {
        let b = self.take(3)?;
        Ok(((b[0] as usize) << 16) | ((b[1] as usize) << 8) | b[2] as usize)
    }
    /// A sub-reader over a length-prefixed vector.
    fn vec8(&mut self) -> Result<Reader<'a>, &'static str> {
        let n = self.u8()? as usize;
        Ok(Reader::new(self.take(n)?))
    }
    fn vec16(&mut self) -> Result<Reader<'a>, &'static str> {
        let n = self.u16()? as usize;
        Ok(Reader::new(self.take(n)?))
    }
    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Parse what the client has sent so far.
pub fn parse_client_hello(buf: &[u8]) -> Result<Hello, &'static str> {
    // Reassemble the handshake layer from the records we have.
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = buf;
    let mut need: Option<usize> = None;
    loop {
        if let Some(n) = need {
            if hs.len() >= n {
                break;
            }
        }
        if rest.is_empty() {
            return Ok(Hello::Incomplete);
        }
        if rest[0] != HANDSHAKE {
            return Err("not a TLS handshake record");
        }
        if rest.len() < 5 {
            // Check what we can of the header early, so that plain text fails at once.
            if rest.len() >= 2 && rest[1] != 3 {
                return Err("not TLS (record version)");
            }
            return Ok(Hello::Incomplete);
        }
        if rest[1] != 3 {
            return Err("not TLS (record version)");
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len == 0 || len > MAX_RECORD {
            return Err("bad TLS record length");
        }
        let Some(frag) = rest.get(5..5 + len) else {
            return Ok(Hello::Incomplete);
        };
        hs.extend_from_slice(frag);
        rest = &rest[5 + len..];
        if need.is_none() && hs.len() >= 4 {
            if hs[0] != CLIENT_HELLO {
                return Err("first handshake message is not a ClientHello");
            }
            let body = ((hs[1] as usize) << 16) | ((hs[2] as usize) << 8) | hs[3] as usize;
            need = Some(4 + body);
        }
    }
    let mut r = Reader::new(&hs);
    let _msg_type = r.u8()?;
    let len = r.u24()?;
    let mut ch = Reader::new(r.take(len)?);
    client_hello_sni(&mut ch).map(Hello::Done)
}

fn client_hello_sni(r: &mut Reader) -> Result<Option<String>, &'static str> {
    let major = r.u8()?;
    let _minor = r.u8()?;
    if major != 3 {
        return Err("unsupported ClientHello version");
    }
    r.take(32)?; // random
    let sid = r.vec8()?;
    if sid.buf.len() > 32 {
        return Err("session id longer than 32 bytes");
    }
    let suites = r.vec16()?;
    if suites.buf.is_empty() || suites.buf.len() % 2 != 0 {
        return Err("bad cipher suite list");
    }
    let comp = r.vec8()?;
    if comp.buf.is_empty() {
        return Err("empty compression method list");
    }
    if r.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut exts = r.vec16()?;
    if !r.is_empty() {
        return Err("trailing bytes after the extensions");
    }
    let mut sni = None;
    while !exts.is_empty() {
        let ty = exts.u16()?;
        let mut data = exts.vec16()?;
        if ty != EXT_SERVER_NAME {
            continue;
        }
        if sni.is_some() {
            return Err("duplicate server_name extension");
        }
        let mut list = data.vec16()?;
        if !data.is_empty() {
            return Err("trailing bytes in server_name");
        }
        while !list.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            // RFC 6066: one name per type; only host_name (0) is defined.
            if name_type == 0 && sni.is_none() {
                sni = Some(host_name(name.buf)?);
            }
        }
    }
    Ok(sni)
}

fn host_name(raw: &[u8]) -> Result<String, &'static str> {
    let s = std::str::from_utf8(raw).map_err(|_| "server name is not ASCII")?;
    let s = s.strip_suffix('.').unwrap_or(s);
    if !crate::config::valid_hostname(s) {
        return Err("server name is not a valid host name");
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello with the given SNI (none when `name` is empty) and `pad` bytes of an
    /// extra extension, wrapped in records of at most `rec` bytes.
    pub fn hello(name: &str, pad: usize, rec: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        // supported_versions first, so the SNI is not at a fixed offset
        exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if !name.is_empty() {
            let n = name.len() as u16;
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&(n + 5).to_be_bytes());
            exts.extend_from_slice(&(n + 3).to_be_bytes());
            exts.push(0);
            exts.extend_from_slice(&n.to_be_bytes());
            exts.extend_from_slice(name.as_bytes());
        }
        if pad > 0 {
            exts.extend_from_slice(&0x0015u16.to_be_bytes());
            exts.extend_from_slice(&(pad as u16).to_be_bytes());
            exts.extend(std::iter::repeat_n(0, pad));
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in hs.chunks(rec) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn finds_sni() {
        let h = hello("Api.Example.COM", 0, MAX_RECORD);
        assert_eq!(
            parse_client_hello(&h),
            Ok(Hello::Done(Some("api.example.com".into())))
        );
        let mut more = h.clone();
        more.extend_from_slice(&[0x14, 3, 3, 0, 1, 1]);
        assert_eq!(
            parse_client_hello(&more),
            Ok(Hello::Done(Some("api.example.com".into())))
        );
    }

    #[test]
    fn no_sni() {
        assert_eq!(
            parse_client_hello(&hello("", 10, MAX_RECORD)),
            Ok(Hello::Done(None))
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let h = hello("a.example.com", 100, MAX_RECORD);
        for i in 0..h.len() {
            assert_eq!(parse_client_hello(&h[..i]), Ok(Hello::Incomplete), "{i}");
        }
    }

    #[test]
    fn spans_several_records() {
        let h = hello("b.example.com", 3000, 700);
        assert_eq!(
            parse_client_hello(&h),
            Ok(Hello::Done(Some("b.example.com".into())))
        );
        for i in 0..h.len() {
            assert_eq!(parse_client_hello(&h[..i]), Ok(Hello::Incomplete), "{i}");
        }
    }

    #[test]
    fn malformed() {
        assert!(parse_client_hello(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse_client_hello(b"\x16\x01").is_err());
        assert!(parse_client_hello(&[HANDSHAKE, 3, 1, 0, 0]).is_err());
        assert!(parse_client_hello(&[HANDSHAKE, 3, 1, 0x48, 0x01]).is_err());
        // a ServerHello where a ClientHello belongs
        assert!(parse_client_hello(&[HANDSHAKE, 3, 3, 0, 4, 2, 0, 0, 0]).is_err());

        let good = hello("a.example.com", 0, MAX_RECORD);
        // handshake length larger than its contents: claims more than the record, and the
        // records end: incomplete, not an error (the caller's bound ends it)
        // inner lengths that overrun their container are errors
        let mut bad_sid = good.clone();
        bad_sid[5 + 4 + 34] = 200;
        assert!(parse_client_hello(&bad_sid).is_err());
        let mut bad_name_len = good.clone();
        let at = bad_name_len.len() - "a.example.com".len() - 1;
        bad_name_len[at] = 0xFF;
        assert!(parse_client_hello(&bad_name_len).is_err());
        let mut bad_name = good.clone();
        let last = bad_name.len() - 1;
        bad_name[last] = b' ';
        assert!(parse_client_hello(&bad_name).is_err());
        // shrink the handshake length by one: the body then has a trailing hole
        let mut short = good.clone();
        short[8] -= 1;
        assert!(parse_client_hello(&short).is_err());

        // Flip every byte of a real hello in turn: never a panic.
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7F, 0xFF] {
                let mut m = good.clone();
                m[i] = v;
                let _ = parse_client_hello(&m);
                let _ = parse_client_hello(&m[..i]);
            }
        }
    }
}
