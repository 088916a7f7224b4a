//! Content filtering: by URL (globs), by content type, and by patterns in the body.
//!
//! The body scan streams. It keeps only the last `longest pattern - 1` bytes of what it has
//! seen (the window), joins them with the head of each new piece to find a pattern split
//! across pieces, and never holds a whole body: memory is O(window) per response, plus
//! the inflate state (32 KiB) for gzip bodies, which are decoded incrementally as they
//! pass. The bytes forwarded to the client are the origin's, unchanged.

use crate::config::forward::FilterSpec;
use flate2::write::GzDecoder;
use std::io::Write;

pub struct Filter {
    spec: FilterSpec,
    window: usize,
}

impl Filter {
    pub fn new(spec: &FilterSpec) -> Filter {
        let window = spec
            .body_patterns
            .iter()
            .map(|p| p.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Filter {
            spec: spec.clone(),
            window,
        }
    }

    pub fn scans_bodies(&self) -> bool {
        !self.spec.body_patterns.is_empty()
    }

    /// Body bytes to hold back with the response head while they are scanned (0: none).
    pub fn hold_head_bytes(&self) -> usize {
        if self.scans_bodies() {
            self.spec.hold_head_bytes
        } else {
            0
        }
    }

    /// The glob that blocks this URL, if any.
    pub fn url_blocked(&self, url: &str) -> Option<&str> {
        self.spec
            .url_patterns
            .iter()
            .find(|g| glob(g.as_bytes(), url.as_bytes()))
            .map(|s| s.as_str())
    }

    /// The rule that blocks this Content-Type value, if any.
    pub fn content_type_blocked(&self, value: &str) -> Option<&str> {
        let media = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.spec
            .content_types
            .iter()
            .find(|t| match t.strip_suffix("/*") {
                Some(ty) => media.split('/').next() == Some(ty),
                None => **t == media,
            })
            .map(|s| s.as_str())
    }

    /// A scanner for a body with this Content-Encoding, `Err` when it cannot be decoded
    /// (and therefore cannot be checked).
    pub fn body_scan(&self, encoding: Option<&str>) -> Result<BodyScan, String> {
        let m = Matcher {
            patterns: self.spec.body_patterns.clone(),
            window: self.window,
            tail: Vec::with_capacity(self.window),
            found: None,
        };
        let enc = encoding.unwrap_or("").trim().to_ascii_lowercase();
        match enc.as_str() {
            "" | "identity" => Ok(BodyScan::Plain(m)),
            "gzip" | "x-gzip" => Ok(BodyScan::Gzip(Box::new(GzDecoder::new(m)))),
            other => Err(format!("content encoding {other:?} cannot be scanned")),
        }
    }
}

pub enum BodyScan {
    Plain(Matcher),
    Gzip(Box<GzDecoder<Matcher>>),
}

impl BodyScan {
    /// Scan the next piece of the body as it came from the origin. `Ok(Some(pattern))` when a
    /// pattern has been found; `Err` when a gzip body is corrupt.
    pub fn feed(&mut self, piece: &[u8]) -> Result<Option<String>, String> {
        match self {
            BodyScan::Plain(m) => {
                m.scan(piece);
                Ok(m.found())
            }
            BodyScan::Gzip(d) => {
                let mut rest = piece;
                while !rest.is_empty() && d.get_ref().found.is_none() {
                    match d.write(rest) {
                        // the gzip member ended; what follows is not part of the content
                        Ok(0) => break,
                        Ok(n) => rest = &rest[n..],
                        Err(e) => return Err(format!("undecodable gzip body: {e}")),
                    }
                }
                if d.get_ref().found.is_none() {
                    let _ = d.flush();
                }
                Ok(d.get_ref().found())
            }
        }
    }
}

pub struct Matcher {
    /// Lower-case.
    patterns: Vec<Vec<u8>>,
    window: usize,
    tail: Vec<u8>,
    found: Option<usize>,
}

impl Matcher {
    fn found(&self) -> Option<String> {
        self.found
            .and_then(|i| self.patterns.get(i))
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    fn find(&self, hay: &[u8]) -> Option<usize> {
        self.patterns.iter().position(|p| {
            hay.len() >= p.len() && hay.windows(p.len()).any(|w| w.eq_ignore_ascii_case(p))
        })
    }

    fn scan(&mut self, data: &[u8]) {
        if self.found.is_some() || data.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            // a pattern that starts in the tail ends within `window` bytes of the new data
            let head = &data[..data.len().min(self.window)];
            let mut joint = Vec::with_capacity(self.tail.len() + head.len());
            joint.extend_from_slice(&self.tail);
            joint.extend_from_slice(head);
            if let Some(i) = self.find(&joint) {
                self.found = Some(i);
                return;
            }
        }
        if let Some(i) = self.find(data) {
            self.found = Some(i);
            return;
        }
        if data.len() >= self.window {
            self.tail.clear();
            self.tail
                .extend_from_slice(&data[data.len() - self.window..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(self.window);
            self.tail.drain(..excess);
        }
    }
}

impl Write for Matcher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.scan(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `*` matches any run of bytes, `?` one byte; ASCII case-insensitive.
pub fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p].eq_ignore_ascii_case(&s[i])) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = i;
            p += 1;
        } else if let Some(sp) = star {
            p = sp + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(patterns: &[&str]) -> Filter {
        Filter::new(&FilterSpec {
            content_types: vec!["application/x-msdownload".into(), "video/*".into()],
            body_patterns: patterns.iter().map(|p| p.as_bytes().to_vec()).collect(),
            url_patterns: vec!["*/malware/*".into()],
            hold_head_bytes: 0,
        })
    }

    #[test]
    fn pattern_split_across_many_pieces() {
        let f = filter(&["forbidden-word", "xyz"]);
        let mut s = f.body_scan(None).unwrap();
        assert_eq!(s.feed(b"hello forb").unwrap(), None);
        assert_eq!(s.feed(b"id").unwrap(), None);
        assert_eq!(s.feed(b"").unwrap(), None);
        assert_eq!(s.feed(b"DEN-wo").unwrap(), None);
        assert_eq!(
            s.feed(b"rd and more").unwrap().as_deref(),
            Some("forbidden-word")
        );
    }

    #[test]
    fn window_stays_bounded() {
        let f = filter(&["needle"]);
        let mut s = f.body_scan(None).unwrap();
        for _ in 0..1000 {
            assert_eq!(s.feed(&[b'a'; 4096]).unwrap(), None);
        }
        let BodyScan::Plain(m) = &s else { panic!() };
        assert!(m.tail.len() <= 5);
    }

    #[test]
    fn gzip_body_scanned_in_pieces() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&vec![b'x'; 100_000]).unwrap();
        enc.write_all(b"a forbidden-word here").unwrap();
        let gz = enc.finish().unwrap();
        let f = filter(&["forbidden-word"]);
        let mut s = f.body_scan(Some("gzip")).unwrap();
        let mut hit = None;
        for piece in gz.chunks(7) {
            if let Some(p) = s.feed(piece).unwrap() {
                hit = Some(p);
                break;
            }
        }
        assert_eq!(hit.as_deref(), Some("forbidden-word"));
        assert!(f.body_scan(Some("br")).is_err());
        let mut s = f.body_scan(Some("gzip")).unwrap();
        assert!(s.feed(b"not gzip at all").is_err());
    }

    #[test]
    fn urls_and_types() {
        let f = filter(&[]);
        assert!(f.url_blocked("http://a.example/malware/x.exe").is_some());
        assert!(f.url_blocked("http://a.example/ok").is_none());
        assert!(f
            .content_type_blocked("Application/X-MSDownload; q=1")
            .is_some());
        assert!(f.content_type_blocked("video/mp4").is_some());
        assert!(f.content_type_blocked("text/html").is_none());
        assert!(glob(b"a*b?d", b"aXXbcd"));
        assert!(!glob(b"a*b?d", b"aXXbd"));
    }
}
