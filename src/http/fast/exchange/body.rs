//! The client's request body on its way to the backend: read into spare room (no buffer is
//! zeroed), held whole within the replay bound, or streamed piece by piece.

use super::{timed, Exchange, Failure};
use crate::http::chunked::{self, Scan};
use crate::http::fast::{Guarded, BODY_BUF};
use crate::policy::answer::Failure as Why;
use log::warn;
use std::io::IoSlice;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

impl Exchange<'_> {
    /// Read one piece of the request body from the client, at most `n` bytes appended to
    /// `b` (into its spare room: no buffer is zeroed first).
    pub(super) async fn read_client(
        &mut self,
        g: &mut Guarded,
        b: &mut Vec<u8>,
        n: usize,
    ) -> Result<usize, Failure> {
        b.reserve(n);
        let mut limited = (&mut *g).take(n as u64);
        match timed(self.timer, self.l.client_timeout, limited.read_buf(b)).await {
            Ok(n) if n > 0 => Ok(n),
            // nginx's client_body_timeout: 408, then close
            Err((true, _)) => Err(Failure::Answer(
                Why::ClientTimeout,
                "the client stalled mid-body".into(),
            )),
            _ => {
                warn!("{}: client closed mid-body", self.l.name);
                Err(Failure::Cut)
            }
        }
    }

    /// Read the rest of the request body (`left` bytes, within the replay bound) into `held`.
    pub(super) async fn hold_request_body(
        &mut self,
        g: &mut Guarded,
        held: &mut Vec<u8>,
        left: u64,
    ) -> Result<(), Failure> {
        let mut left = left as usize;
        while left > 0 {
            left -= self.read_client(g, held, left).await?;
        }
        Ok(())
    }

    /// Read the next piece of a chunked request body into `wire` and find its data: the
    /// ranges of `wire` that hold it (into `ranges`), their total and the scan's outcome.
    /// Past the route's `max_body_size`, a 413.
    async fn read_chunked(
        &mut self,
        g: &mut Guarded,
        wire: &mut Vec<u8>,
        ranges: &mut Vec<std::ops::Range<usize>>,
    ) -> Result<(u64, Scan), Failure> {
        wire.clear();
        self.read_client(g, wire, BODY_BUF).await?;
        let Some(c) = self.chunked.as_mut() else {
            return Ok((0, Scan::More));
        };
        // the guard refused a malformed body before any of it got here
        let (n, scan) = c.scan.data_pieces(wire, ranges).map_err(|e| {
            let why = format!("malformed chunked request body: {}", e.0);
            Failure::Answer(Why::BadRequest, why)
        })?;
        c.data += n;
        if let Scan::Done(k) = scan {
            c.ended = true;
            // the guard hands on no byte past the body; were there any, they would be the
            // next request's
            g.unread(&wire[k..]);
        }
        if c.data > c.limit {
            warn!(
                "{}: request body exceeds max_body_size {}",
                self.l.name, c.limit
            );
            return Err(Failure::Answer(
                Why::BodyTooLarge,
                "request body too large".into(),
            ));
        }
        Ok((n, scan))
    }

    /// The request (`head`: its head and the body bytes that came with it, framed) and the
    /// rest of its chunked body, read from the client until it ends. Each read's data goes
    /// out as one chunk in one `writev` (the head with the first): its size line, the data
    /// where it lies in the read buffer (not copied), its CRLF.
    pub(super) async fn stream_chunked_body(
        &mut self,
        g: &mut Guarded,
        up: &mut TcpStream,
        mut head: &[u8],
    ) -> Result<(), Failure> {
        let (mut wire, mut ranges) = (Vec::new(), Vec::new());
        while self.chunked.as_ref().is_some_and(|c| !c.ended) {
            let (n, scan) = self.read_chunked(g, &mut wire, &mut ranges).await?;
            let (line, k) = chunked::frame_head(n);
            let mut bufs = Vec::with_capacity(ranges.len() + 3);
            bufs.push(IoSlice::new(std::mem::take(&mut head)));
            bufs.push(IoSlice::new(&line[..k]));
            bufs.extend(ranges.iter().map(|r| IoSlice::new(&wire[r.clone()])));
            bufs.push(IoSlice::new(chunked::frame_tail(n, scan)));
            let sent = timed(
                self.timer,
                self.pool.spec.write_timeout,
                crate::net::sys::send_all_vectored(up, &mut bufs),
            );
            if let Err((_, e)) = sent.await {
                return Err(Failure::Answer(
                    Why::BadResponse,
                    format!("sending the request: {e}"),
                ));
            }
        }
        Ok(())
    }

    /// The rest of a streamed request body (`left` bytes after the first piece, which went
    /// with the head), relayed through `b`.
    pub(super) async fn stream_request_body(
        &mut self,
        g: &mut Guarded,
        up: &mut TcpStream,
        b: &mut Vec<u8>,
        mut left: u64,
    ) -> Result<(), Failure> {
        while left > 0 {
            b.clear();
            let n = self.read_client(g, b, BODY_BUF.min(left as usize)).await?;
            left -= n as u64;
            let sent = crate::net::sys::send_all(up, b, 0);
            if let Err((_, e)) = timed(self.timer, self.pool.spec.write_timeout, sent).await {
                return Err(Failure::Answer(
                    Why::BadResponse,
                    format!("sending the request body: {e}"),
                ));
            }
        }
        Ok(())
    }
}

/// Write `a` then `b` with as few syscalls as the socket allows (one, usually).
pub(super) async fn write_both(up: &mut TcpStream, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    if b.is_empty() {
        // A bodiless request, most of them: `send` rather than a gathered write, whose path
        // (the iovec copied in) cost about a percent of an HTTP/2 request's CPU in the
        // kernel profile (RESULTS.md, session 22).
        return crate::net::sys::send_all(up, a, 0).await;
    }
    let mut bufs = [IoSlice::new(a), IoSlice::new(b)];
    crate::net::sys::send_all_vectored(up, &mut bufs).await
}

/// One chunk of a body the proxy frames itself; nothing for an empty piece (an empty chunk
/// would end the body).
pub(super) fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let whole = 0..data.len();
    chunked::frame_into(
        out,
        data,
        std::slice::from_ref(&whole),
        data.len() as u64,
        Scan::More,
    );
}
