//! The receiving side of a request stream, for both engines, read through one type so that
//! it is always ended the same way.
//!
//! A response may be done before the request stream is (a cache hit or an answer of the
//! proxy's own sent before the client's end of the stream, a body left unread). Dropped as
//! it is, quinn would stop the stream with STOP_SENDING code 0, which HTTP/3 does not define;
//! an h3 client then fails the request when the stop comes before its own end of the stream,
//! complete response or not. So what is left is read and dropped, as nginx discards a body
//! it does not need: at most [`DRAIN_BYTES`] within [`DRAIN_TIME`], after which the stream
//! goes (code 0). It cannot be stopped with H3_NO_ERROR instead once a read has begun:
//! h3-quinn keeps the QUIC stream inside a read that has not finished (h3 hands out
//! buffered data while one waits) and its `stop_sending` then panics on the missing stream.
//! [`Body::stop`] stops one that was never read, as a reset response does.

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use h3::error::{Code, StreamError};
use h3::server::RequestStream;
use std::time::Duration;

type Stream = RequestStream<h3_quinn::RecvStream, Bytes>;

/// How long what is left of a request stream is read after its response is done.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// How much of it.
const DRAIN_BYTES: usize = 1 << 20;

pub struct Body {
    /// Taken only by the drop.
    recv: Option<Stream>,
    /// A read has begun: the stream may be inside one (see the module doc).
    read: bool,
    /// The client ended the stream (its end was read) or reset it, or it was stopped.
    ended: bool,
}

impl Body {
    pub fn new(recv: Stream) -> Body {
        Body {
            recv: Some(recv),
            read: false,
            ended: false,
        }
    }

    /// The next piece of the body; `None` at its end. Cancel-safe: a read cut short goes on
    /// at the next call, its data not lost.
    pub async fn data(&mut self) -> Result<Option<impl Buf>, StreamError> {
        let Some(recv) = self.recv.as_mut() else {
            return Ok(None);
        };
        self.read = true;
        let got = recv.recv_data().await;
        self.ended = matches!(got, Ok(None) | Err(_));
        got
    }

    /// A failed request (its response reset): ask the client to stop sending, if that can be
    /// done (never read); else the drop reads what is left.
    pub fn stop(&mut self) {
        if let (Some(recv), false, false) = (self.recv.as_mut(), self.read, self.ended) {
            recv.stop_sending(Code::H3_NO_ERROR);
            self.ended = true;
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let Some(mut recv) = self.recv.take().filter(|_| !self.ended) else {
            return;
        };
        // usually the end is here already
        if let Some(Ok(None) | Err(_)) = recv.recv_data().now_or_never() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut left = DRAIN_BYTES;
            let drain = async {
                while let Ok(Some(b)) = recv.recv_data().await {
                    left = left.saturating_sub(b.remaining());
                    if left == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}
