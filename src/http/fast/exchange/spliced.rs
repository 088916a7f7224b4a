//! Bodies of known length moved between the client's plain socket and the backend's with
//! splice(2) (`splice: true`, [`crate::net::zerocopy::transfer`]): their bytes are not
//! copied into the process and out again. The policy says which bodies may
//! ([`crate::policy::ListenerPolicy::splices_body`]); here the engine checks that it can
//! (the client's socket is plain, nothing of the body is buffered ahead of it).

use super::{Exchange, Failure};
use crate::http::fast::Guarded;
use crate::net::zerocopy::{transfer, End, Short};
use crate::policy::answer::Failure as Why;
use log::warn;
use tokio::net::TcpStream;

impl Exchange<'_> {
    /// The rest of a Content-Length request body (`left` bytes), client to backend.
    pub(super) async fn splice_request_body(
        &mut self,
        g: &mut Guarded,
        up: &TcpStream,
        left: u64,
    ) -> Result<(), Failure> {
        let Some(client) = g.body_socket(left) else {
            return Err(Failure::Answer(
                Why::Internal,
                "request body without its socket".into(),
            ));
        };
        let timeouts = (self.l.client_timeout, self.pool.spec.write_timeout);
        let s = transfer(End::Client(client), End::Backend(up), left, timeouts).await;
        g.spliced(s.taken, s.acked);
        match s.result {
            Ok(()) => Ok(()),
            // nginx's client_body_timeout: 408, then close
            Err(Short::ReadTimeout) => Err(Failure::Answer(
                Why::ClientTimeout,
                "the client stalled mid-body".into(),
            )),
            Err(Short::Ended) => {
                warn!("{}: client closed mid-body", self.l.name);
                Err(Failure::Cut)
            }
            Err(Short::Write(_, e)) => Err(Failure::Answer(
                Why::BadResponse,
                format!("sending the request body: {e}"),
            )),
        }
    }

    /// The rest of a Content-Length response body (`left` bytes), backend to client, when
    /// the policy and the client's socket allow: `Ok(false)` when they do not (the caller
    /// copies it). The head is sent already, so a failure cuts the response.
    pub(super) async fn splice_response_body(
        &mut self,
        g: &mut Guarded,
        up: &TcpStream,
        left: u64,
    ) -> Result<bool, Failure> {
        let client = match self.l.splices_body(left) {
            true => g.plain_socket(),
            false => None,
        };
        let Some(client) = client else {
            return Ok(false);
        };
        let timeouts = (self.try_timeout, self.l.client_timeout);
        let s = transfer(End::Backend(up), End::Client(client), left, timeouts).await;
        self.bytes_out += s.taken as usize;
        match s.result {
            Ok(()) => Ok(true),
            Err(Short::Write(..)) => Err(Failure::Cut),
            Err(e) => {
                let e = match e {
                    Short::ReadTimeout => "timed out".to_string(),
                    _ => "closed the connection".to_string(),
                };
                warn!(
                    "{}: backend {} {e} mid-body",
                    self.l.name,
                    self.slot_label()
                );
                Err(Failure::Cut)
            }
        }
    }
}

/// Write a request head whose body follows by splice(2): MSG_MORE holds it in the socket
/// until the body's first bytes join it, so the backend gets one segment, as it does when
/// the head and the body's first piece go in one write.
pub(super) async fn write_head_more(up: &TcpStream, a: &[u8]) -> std::io::Result<()> {
    crate::net::sys::send_all(up, a, libc::MSG_MORE).await
}
