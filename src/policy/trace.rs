//! W3C Trace Context (traceparent version 00): continue the caller's trace or start one,
//! decide sampling, and state the proxy's own span to the origin. Every engine calls
//! [`begin`] with the request's `traceparent` and writes [`traceparent`] upstream in its
//! place; `tracestate` is relayed unchanged. Off (nothing done) unless `tracing` is set.

use crate::observability::tracing::TraceCtx;

/// The caller's context, from a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None, // the format is lower-case only
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = d(s[2 * i])? << 4 | d(s[2 * i + 1])?;
    }
    Some(out)
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; anything else (another
/// version, upper case, all-zero ids, extra fields) is malformed and ignored, so the
/// request starts a new trace.
pub fn parse(v: &[u8]) -> Option<Parent> {
    let v = v.trim_ascii();
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = unhex::<16>(&v[3..35])?;
    let span_id = unhex::<8>(&v[36..52])?;
    let [flags] = unhex::<1>(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// The request's context from its `traceparent` fields (`None` when it has none, or more
/// than one: several are malformed too), fresh ids and a roll in [0, 1) for the ratio.
pub fn decide(
    incoming: &[&[u8]],
    ratio: f64,
    fresh_trace: [u8; 16],
    span_id: [u8; 8],
    roll: f64,
) -> TraceCtx {
    let parent = match incoming {
        [one] => parse(one),
        _ => None,
    };
    match parent {
        Some(p) => TraceCtx {
            trace_id: p.trace_id,
            span_id,
            parent: Some(p.span_id),
            sampled: p.sampled,
        },
        None => TraceCtx {
            trace_id: fresh_trace,
            span_id,
            parent: None,
            sampled: roll < ratio,
        },
    }
}

/// The request's context when tracing is on, else `None` (and nothing is done).
pub fn begin<'a>(incoming: impl Iterator<Item = &'a [u8]>) -> Option<TraceCtx> {
    let ratio = crate::observability::tracing::sample_ratio()?;
    let fields: Vec<&[u8]> = incoming.take(2).collect();
    let mut trace: [u8; 16] = rand::random();
    let mut span: [u8; 8] = rand::random();
    // all-zero ids are invalid; the odds are nil, but cheap to rule out
    trace[0] |= (trace == [0; 16]) as u8;
    span[0] |= (span == [0; 8]) as u8;
    Some(decide(&fields, ratio, trace, span, rand::random::<f64>()))
}

/// The `traceparent` value the origin receives: the trace, the proxy's span, the decision.
pub fn traceparent(t: &TraceCtx) -> [u8; 55] {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = H[(b >> 4) as usize];
            out[at + 2 * i + 1] = H[(b & 15) as usize];
        }
    };
    put(3, &t.trace_id);
    put(36, &t.span_id);
    put(53, &[u8::from(t.sampled)]);
    out
}

/// The `traceparent` line of an HTTP/1 request head.
pub fn h1_line(out: &mut Vec<u8>, t: &TraceCtx) {
    out.extend_from_slice(b"traceparent: ");
    out.extend_from_slice(&traceparent(t));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_version_00_and_rejects_the_rest() {
        let p = parse(TP).unwrap();
        assert_eq!(p.trace_id[..2], [0x4b, 0xf9]);
        assert_eq!(p.span_id[7], 0xb7);
        assert!(p.sampled);
        for bad in [
            &b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"garbage",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn sampling_follows_the_parent_else_the_ratio() {
        let (t, s) = ([7u8; 16], [9u8; 8]);
        let c = decide(&[TP], 0.0, t, s, 0.5);
        assert!(c.sampled && c.parent == Some(parse(TP).unwrap().span_id));
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!decide(&[unsampled], 1.0, t, s, 0.0).sampled);
        let fresh = decide(&[], 0.25, t, s, 0.2);
        assert!(fresh.sampled && fresh.parent.is_none() && fresh.trace_id == t);
        assert!(!decide(&[], 0.25, t, s, 0.3).sampled);
        // two traceparent fields: malformed, a new trace
        assert_eq!(decide(&[TP, TP], 0.0, t, s, 0.5).trace_id, t);
    }

    #[test]
    fn outgoing_value() {
        let c = decide(&[TP], 0.0, [1; 16], [0xab; 8], 0.0);
        assert_eq!(
            &traceparent(&c)[..],
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-abababababababab-01"[..]
        );
        assert_eq!(parse(&traceparent(&c)).unwrap().span_id, [0xab; 8]);
    }
}
