//! The lean engine's answers that need no backend: the policy's own pages and fresh cache
//! hits, each counted as a request.

use super::{end, write_last, Guarded, Outcome, Req, RESP_BUF};
use crate::observability::{self, RequestObs};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

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
    observability::fast_request_done(&r.view, route, None, obs, code, 0, false);
    if ok && keep {
        g.unread(r.pipelined);
        return Outcome::KeepAlive;
    }
    end(g, timeout).await;
    Outcome::Close
}

/// Send a cache hit and count the request. A small body goes out in the head's buffer; a
/// larger one is written from the store's buffer, never copied.
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
            let w = async {
                g.inner_mut().write_all(&head).await?;
                g.inner_mut().write_all(b).await?;
                match keep {
                    true => g.inner_mut().flush().await,
                    // left to `end`, with a TLS stream's close_notify
                    false => Ok(()),
                }
            };
            matches!(tokio::time::timeout(timeout, w).await, Ok(Ok(())))
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
