//! The HTTP check's request over HTTP/2, for `http2` upstreams: to a TLS backend that chose h2
//! by ALPN, or in cleartext by prior knowledge (h2c), as their requests go.
//!
//! The request carries its scheme and authority as pseudo-header fields and no `Host` field.
//! Pingora's `HttpHealthCheck` sent both `:authority` and `Host`, which nginx answers with
//! 400, so every backend of an `http2` upstream behind nginx was marked down.

use super::http::{Fail, Io};
use bytes::Bytes;
use h2::client::SendRequest;

/// An HTTP/2 connection: its request side, and the task that reads and writes its frames.
pub(super) struct H2 {
    send: SendRequest<Bytes>,
    task: tokio::task::AbortHandle,
}

impl Drop for H2 {
    /// The connection is dropped, not shut down: a graceful end (GOAWAY, close_notify, FIN)
    /// would leave the proxy a TIME_WAIT socket per check, where the reset that its socket is
    /// set up for leaves none, as with the HTTP/1.1 and TCP checks.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Open HTTP/2 on `io`.
pub(super) async fn handshake(io: Box<dyn Io>) -> Result<H2, Fail> {
    let (send, conn) = h2::client::handshake(io).await.map_err(unanswered)?;
    let task = tokio::spawn(async move {
        // the connection's end, by either side, ends the task; there is no one to tell
        let _ = conn.await;
    })
    .abort_handle();
    Ok(H2 { send, task })
}

/// One GET of `uri`; the connection back, for the next check, when the status is `expect`.
pub(super) async fn ask(mut c: H2, uri: &http::Uri, expect: u16) -> Result<H2, Fail> {
    // a kept connection that the backend closed (GOAWAY, or the socket) fails here, before
    // any request went out
    c.send = c.send.clone().ready().await.map_err(unanswered)?;
    let req = http::Request::get(uri.clone())
        .header(http::header::USER_AGENT, "stepstone-health-check")
        .body(())
        .map_err(|e| Fail::Head(format!("the check's request: {e}")))?;
    let (resp, _) = c.send.send_request(req, true).map_err(unanswered)?;
    let resp = resp.await.map_err(|e| {
        // refused (REFUSED_STREAM, or past a GOAWAY's last stream) or cut off: the backend
        // did not process the request, which a new connection asks again
        if e.is_io() || e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
            unanswered(e)
        } else {
            Fail::Head(format!("HTTP/2: {e}"))
        }
    })?;
    let code = resp.status().as_u16();
    if code != expect {
        return Err(Fail::Status(code));
    }
    // the body is not read: dropping it resets the stream, and the connection stays usable
    Ok(c)
}

fn unanswered(e: h2::Error) -> Fail {
    if e.is_io() {
        Fail::Unanswered(e.into_io())
    } else {
        Fail::Unanswered(Some(std::io::Error::other(format!("HTTP/2: {e}"))))
    }
}
