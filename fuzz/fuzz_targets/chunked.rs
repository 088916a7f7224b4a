//! The chunked-body scanner (src/http/chunked.rs), which frames request bodies in the
//! request-head guard and responses on the lean engine, against a reference parser written
//! line by line from RFC 9112 §7.1 with the same limits. Whatever the bytes and however they
//! are split: when one finds a complete body, the other finds the same end (and the scanner
//! decodes the same data); what one refuses, the other never completes. And the body the
//! request guard passes on, each piece's whole chunks merged into one (`coalesce`), is a
//! complete body with the same data wherever the original was; so is what the lean engine
//! sends on from those pieces in its own framing (`data_pieces`, `frame_into`), with no
//! chunk extension.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stepstone::http::chunked::{coalesce, frame_into, ChunkedScanner, Scan};

const MAX_LINE: usize = 4096;

enum Verdict {
    Complete(usize, Vec<u8>),
    Invalid,
    Incomplete,
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn ext_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// CRLF at `p`: the position after it.
fn crlf(d: &[u8], p: usize) -> Result<usize, Verdict> {
    match (d.get(p), d.get(p + 1)) {
        (None, _) => Err(Verdict::Incomplete),
        (Some(b'\r'), None) => Err(Verdict::Incomplete),
        (Some(b'\r'), Some(b'\n')) => Ok(p + 2),
        _ => Err(Verdict::Invalid),
    }
}

/// Whether a complete chunked body has only bare hex sizes and no trailer field.
fn plain_framing(d: &[u8]) -> bool {
    let mut p = 0;
    loop {
        let Some(len) = d[p..].windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let line = &d[p..p + len];
        if line.is_empty() || !line.iter().all(u8::is_ascii_hexdigit) {
            return false;
        }
        let size = line.iter().fold(0usize, |n, &b| {
            n.saturating_mul(16)
                .saturating_add((b as char).to_digit(16).unwrap_or(0) as usize)
        });
        p += len + 2;
        if size == 0 {
            return &d[p..] == b"\r\n";
        }
        p = p.saturating_add(size).saturating_add(2);
        if p > d.len() {
            return false;
        }
    }
}

fn reference(d: &[u8]) -> Verdict {
    match parse(d) {
        Ok(v) | Err(v) => v,
    }
}

fn parse(d: &[u8]) -> Result<Verdict, Verdict> {
    let mut p = 0;
    let mut out = Vec::new();
    loop {
        let (mut size, mut digits) = (0u64, 0);
        while let Some(v) = d.get(p).and_then(|&b| hex(b)) {
            if digits == 15 {
                return Ok(Verdict::Invalid);
            }
            size = size * 16 + v;
            digits += 1;
            p += 1;
        }
        let Some(&b) = d.get(p) else {
            return Ok(Verdict::Incomplete);
        };
        if digits == 0 {
            return Ok(Verdict::Invalid);
        }
        if b == b';' || b == b' ' || b == b'\t' {
            p += 1;
            let mut n = 0;
            loop {
                let Some(&b) = d.get(p) else {
                    return Ok(Verdict::Incomplete);
                };
                if b == b'\r' {
                    break;
                }
                if !ext_byte(b) {
                    return Ok(Verdict::Invalid);
                }
                n += 1;
                if n > MAX_LINE {
                    return Ok(Verdict::Invalid);
                }
                p += 1;
            }
        }
        p = crlf(d, p)?;
        if size == 0 {
            break;
        }
        if ((d.len() - p) as u64) < size {
            return Ok(Verdict::Incomplete);
        }
        out.extend_from_slice(&d[p..p + size as usize]);
        p = crlf(d, p + size as usize)?;
    }
    loop {
        let Some(&b) = d.get(p) else {
            return Ok(Verdict::Incomplete);
        };
        if b == b'\r' {
            return crlf(d, p).map(|end| Verdict::Complete(end, out));
        }
        if !tchar(b) {
            return Ok(Verdict::Invalid);
        }
        let (mut n, mut colon) = (1, false);
        p += 1;
        loop {
            let Some(&b) = d.get(p) else {
                return Ok(Verdict::Incomplete);
            };
            if b == b'\r' {
                if !colon {
                    return Ok(Verdict::Invalid);
                }
                break;
            }
            if colon {
                if !ext_byte(b) {
                    return Ok(Verdict::Invalid);
                }
            } else if b == b':' {
                colon = true;
            } else if !tchar(b) {
                return Ok(Verdict::Invalid);
            }
            n += 1;
            if n > MAX_LINE {
                return Ok(Verdict::Invalid);
            }
            p += 1;
        }
        p = crlf(d, p)?;
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let at = if data.is_empty() {
        0
    } else {
        split as usize % data.len()
    };
    // the scanner, fed in two pieces; `end` is the body's end in `data`
    let mut s = ChunkedScanner::default();
    let mut decoded = Vec::new();
    let mut end = None;
    let mut refused = false;
    let mut fed = 0;
    for piece in [&data[..at], &data[at..]] {
        match s.scan_into(piece, Some(&mut decoded)) {
            Ok(Scan::Done(k)) => {
                end = Some(fed + k);
                break;
            }
            Ok(Scan::More) => fed += piece.len(),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    // the lean engine's count of a chunked answer's body (the data, not the framing), fed
    // the same two pieces: the decoded data's length wherever the scan stands
    let (mut counting, mut counted) = (ChunkedScanner::default(), 0u64);
    for piece in [&data[..at], &data[at..]] {
        match counting.scan_counting(piece, None, &mut counted) {
            Ok(Scan::More) => {}
            _ => break,
        }
    }
    assert_eq!(
        counted,
        decoded.len() as u64,
        "counted data differs from decoded"
    );
    // the same two pieces as the guard passes them on: cut at the end, whole chunks merged
    let (mut g, mut spans, mut merged) = (ChunkedScanner::default(), Vec::new(), Vec::new());
    // and as the lean engine sends those pieces on
    let (mut lean, mut reframed) = (ChunkedScanner::default(), Vec::new());
    for piece in [&data[..at], &data[at..]] {
        let mut p = piece.to_vec();
        let Ok(scan) = g.scan_spans(&p, &mut spans) else {
            break;
        };
        let keep = match scan {
            Scan::Done(k) => k,
            Scan::More => p.len(),
        };
        p.truncate(keep);
        let n = coalesce(&mut p, &spans);
        merged.extend_from_slice(&p[..n]);
        let mut ranges = Vec::new();
        match lean.data_pieces(&p[..n], &mut ranges) {
            Ok((d, scan)) => {
                if let Scan::Done(k) = scan {
                    assert_eq!(k, n, "the lean engine's scanner ended early");
                }
                frame_into(&mut reframed, &p[..n], &ranges, d, scan);
            }
            Err(e) => panic!("the lean engine refused what the guard passed: {}", e.0),
        }
        if matches!(scan, Scan::Done(_)) {
            break;
        }
    }
    match reference(data) {
        Verdict::Complete(e, body) => {
            assert_eq!(end, Some(e), "the reference ends the body at {e}");
            assert_eq!(decoded, body, "decoded data differs");
            assert!(merged.len() <= e, "merging made the body longer");
            match reference(&merged) {
                Verdict::Complete(m, merged_body) => {
                    assert_eq!(m, merged.len(), "the merged body ends early");
                    assert_eq!(merged_body, body, "merging changed the data");
                }
                _ => panic!("the merged body is not a complete body"),
            }
            match reference(&reframed) {
                Verdict::Complete(m, lean_body) => {
                    assert_eq!(m, reframed.len(), "the reframed body ends early");
                    assert_eq!(lean_body, body, "reframing changed the data");
                }
                _ => panic!("the reframed body is not a complete body"),
            }
            assert!(
                plain_framing(&reframed),
                "an extension or a trailer was sent on"
            );
        }
        Verdict::Invalid => assert!(
            end.is_none(),
            "the scanner completed a body the reference refuses"
        ),
        Verdict::Incomplete => assert!(
            end.is_none(),
            "the scanner completed a body the reference does not"
        ),
    }
    if refused {
        assert!(
            !matches!(reference(data), Verdict::Complete(..)),
            "the scanner refused a body the reference completes"
        );
    }
});
