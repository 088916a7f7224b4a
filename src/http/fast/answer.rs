//! The lean engine's answers that need no backend: the policy's own pages and fresh cache
//! hits, each counted as a request.

use super::write::{end, write_last, write_last_parts};
use super::{Guarded, Outcome, Req, RESP_BUF};
use crate::observability::{self, RequestObs};
use std::io::IoSlice;
use std::time::Duration;

/// The body bytes of an HTTP/1 answer written whole (what follows its head's empty line), as
/// the access log and the body-byte counter take them on every engine.
pub(super) fn page_body_len(page: &[u8]) -> usize {
    page.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| page.len() - at - 4)
}

/// Send one of our own pages and count the request.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish_own(
    g: &mut Guarded,
    r: &Req<'_>,
    route: Option<usize>,
    obs: &RequestObs,
    code: u16,
    page: Vec<u8>,
    keep: bool,
    timeout: Duration,
) -> Outcome {
    let ok = write_last(g, &page, timeout, keep).await.is_ok();
    let sent = if ok { page_body_len(&page) } else { 0 };
    observability::fast_request_done(&r.view, route, None, obs, code, sent, false);
    if ok && keep {
        g.unread(r.pipelined);
        return Outcome::KeepAlive;
    }
    end(g, timeout).await;
    Outcome::Close
}

/// Send a cache hit and count the request. A small body goes out in the head's buffer; a
/// larger one is written from the store's buffer, never copied, in the same `sendmsg` as the
/// head on a plain socket: a head written on its own left in a segment of its own (341
/// bytes before a 64 KiB body), one more system call here and one more segment for the
/// client to take in.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish_hit(
    g: &mut Guarded,
    r: &Req<'_>,
    route: usize,
    obs: &RequestObs,
    code: u16,
    mut head: Vec<u8>,
    body: Option<bytes::Bytes>,
    keep: bool,
    timeout: Duration,
) -> Outcome {
    let body_len = body.as_ref().map_or(0, |b| b.len());
    let ok = match &body {
        Some(b) if b.len() > RESP_BUF => {
            let mut bufs = [IoSlice::new(&head), IoSlice::new(b)];
            write_last_parts(g, &mut bufs, timeout, keep).await.is_ok()
        }
        _ => {
            if let Some(b) = &body {
                head.extend_from_slice(b);
            }
            write_last(g, &head, timeout, keep).await.is_ok()
        }
    };
    let sent = if ok { body_len } else { 0 };
    observability::fast_request_done(&r.view, Some(route), None, obs, code, sent, true);
    if ok && keep {
        g.unread(r.pipelined);
        return Outcome::KeepAlive;
    }
    end(g, timeout).await;
    Outcome::Close
}
