//! The response on its way to the client: the head (with the policy's own fields), the body
//! relayed as it arrives (length, chunked with its trailers held back, close-delimited, or
//! re-chunked for a client that needs it), an upgrade's tunnel, and the backend connection
//! given back when the body ended cleanly.

use super::body::push_chunk;
use super::{timed, Exchange, Failure, SMALL_BODY};
use crate::http::fast::response::{Framing, RespHead};
use crate::http::fast::write::{write_flush, write_last};
use crate::http::fast::{Guarded, BODY_BUF};
use crate::net::sys::{recv_buf, recv_buf_room};
use crate::policy::answer::Failure as Why;
use log::warn;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

impl Exchange<'_> {
    /// Write the response head and stream the body; give the connection back to the pool
    /// when the body ended cleanly.
    pub(super) async fn respond(
        &mut self,
        g: &mut Guarded,
        mut up: TcpStream,
        mut rbuf: Vec<u8>,
        mut h: RespHead,
    ) -> Result<bool, Failure> {
        self.status = h.code;
        if let Some(c) = self.sticky_cookie() {
            crate::policy::sticky::push_h1(&mut h.head, &c);
        }
        crate::policy::edit::push_alt_svc_h1(self.l, &mut h.head);
        if h.upgraded {
            return self.tunnel(g, up, rbuf, h).await;
        }
        // whether the client connection stays open after this response
        let keep = h.client_keep && (h.framing != Framing::Close || h.rechunk);
        // A small body the backend sent behind its head (often a second segment) is waited
        // for, so head and body leave in one write instead of two.
        if let Framing::Length(n) = h.framing {
            let want = h.head_len.saturating_add(n as usize);
            if n as usize <= SMALL_BODY && rbuf.len() < want {
                rbuf.reserve(want - rbuf.len());
                while rbuf.len() < want {
                    match timed(self.timer, self.try_timeout, recv_buf(&up, &mut rbuf)).await {
                        Ok(0) => {
                            return Err(Failure::Answer(
                                Why::BadResponse,
                                "backend closed the connection before the body".into(),
                            ))
                        }
                        Ok(_) => {}
                        Err((true, _)) => {
                            return Err(Failure::Answer(
                                Why::ResponseTimeout,
                                "response body timed out".into(),
                            ))
                        }
                        Err((false, e)) => {
                            return Err(Failure::Answer(
                                Why::BadResponse,
                                format!("reading the body: {e}"),
                            ))
                        }
                    }
                }
            }
        }
        let mut out = h.head;
        let mut upstream_keep = h.upstream_keep;
        let mut scanner = crate::http::chunked::ChunkedScanner::default();
        let mut done = false;
        let mut left = 0u64;
        // the data of a chunked answer's first bytes (what is counted as sent), framing aside
        let mut payload = 0u64;
        // the body bytes that came with the head
        let first = &rbuf[h.head_len..];
        let take = match h.framing {
            Framing::None => {
                done = true;
                upstream_keep &= first.is_empty();
                0
            }
            Framing::Length(n) => {
                let t = (first.len() as u64).min(n);
                left = n - t;
                done = left == 0;
                upstream_keep &= first.len() as u64 <= n;
                t as usize
            }
            // an HTTP/1.0 client's data is taken out of the framing straight into `out`
            Framing::Chunked => {
                match scanner.scan_counting(first, h.dechunk.then_some(&mut out), &mut payload) {
                    Ok(crate::http::chunked::Scan::Done(k)) => {
                        done = true;
                        upstream_keep &= k == first.len();
                        k
                    }
                    Ok(crate::http::chunked::Scan::More) => first.len(),
                    Err(e) => {
                        return Err(Failure::Answer(
                            Why::BadResponse,
                            format!("bad chunked body: {}", e.0),
                        ));
                    }
                }
            }
            Framing::Close => first.len(),
        };
        if h.rechunk {
            push_chunk(&mut out, &first[..take]);
        } else if !h.dechunk {
            // a chunked body's trailer fields are not passed on (policy::edit::response)
            let (pass, crlf) = scanner.without_trailers(take, done);
            out.extend_from_slice(&first[..pass]);
            if crlf {
                out.extend_from_slice(b"\r\n");
            }
        }
        self.bytes_out = if h.framing == Framing::Chunked {
            payload as usize
        } else {
            take
        };
        if done {
            if write_last(g, &out, self.l.client_timeout, keep)
                .await
                .is_err()
            {
                return Err(Failure::Cut);
            }
            if upstream_keep {
                self.give_back(up);
            }
            return Ok(keep);
        }
        // A body without a length may be generated as it goes (Server-Sent Events, a
        // progress stream): the head and each piece are flushed, since a TLS stream buffers
        // writes. A sized body is flushed at its end.
        let streamed = !matches!(h.framing, Framing::Length(_));
        if self.put(g, &out, streamed).await.is_err() {
            return Err(Failure::Cut);
        }
        drop(out);
        if matches!(h.framing, Framing::Length(_))
            && self.splice_response_body(g, &up, left).await?
        {
            if upstream_keep {
                self.give_back(up);
            }
            return Ok(keep);
        }
        // an HTTP/1.0 client's decoded data, each read's
        let mut data = Vec::new();
        loop {
            let Some(n) = self.read_body(&mut up, &mut rbuf, h.framing).await? else {
                upstream_keep = false;
                if h.rechunk && self.put(g, b"0\r\n\r\n", streamed).await.is_err() {
                    return Err(Failure::Cut);
                }
                break;
            };
            let chunk = &rbuf[..n];
            if h.rechunk {
                let mut framed = Vec::with_capacity(n + 16);
                push_chunk(&mut framed, chunk);
                if self.put(g, &framed, streamed).await.is_err() {
                    return Err(Failure::Cut);
                }
                self.bytes_out += n;
                continue;
            }
            // `counted`: the body bytes this read brings, a chunked answer's data alone
            let (take, end, counted) = match h.framing {
                Framing::Length(_) => {
                    let t = (n as u64).min(left);
                    left -= t;
                    upstream_keep &= n as u64 == t || left > 0;
                    (t as usize, left == 0, t as usize)
                }
                Framing::Chunked => {
                    let mut d = 0u64;
                    match scanner.scan_counting(chunk, h.dechunk.then_some(&mut data), &mut d) {
                        Ok(crate::http::chunked::Scan::Done(k)) => {
                            upstream_keep &= k == n;
                            (k, true, d as usize)
                        }
                        Ok(crate::http::chunked::Scan::More) => (n, false, d as usize),
                        Err(e) => return Err(self.bad_chunk(e)),
                    }
                }
                _ => (n, false, n),
            };
            if h.dechunk {
                if self.put(g, &data, streamed).await.is_err() {
                    return Err(Failure::Cut);
                }
                self.bytes_out += counted;
                data.clear();
                if end {
                    break;
                }
                continue;
            }
            let (pass, crlf) = scanner.without_trailers(take, end);
            let ok = match crlf {
                false => self.put(g, &chunk[..pass], streamed).await,
                true => {
                    self.put(g, &[&chunk[..pass], b"\r\n"].concat(), streamed)
                        .await
                }
            };
            if ok.is_err() {
                return Err(Failure::Cut);
            }
            self.bytes_out += counted;
            if end {
                break;
            }
        }
        // a closing connection's last bytes go with a TLS stream's close_notify (`end`)
        if keep
            && timed(self.timer, self.l.client_timeout, g.inner_mut().flush())
                .await
                .is_err()
        {
            return Err(Failure::Cut);
        }
        if upstream_keep {
            self.give_back(up);
        }
        Ok(keep)
    }

    /// Write one piece of the response to the client, flushed when `flush`.
    async fn put(&mut self, g: &mut Guarded, data: &[u8], flush: bool) -> std::io::Result<()> {
        if flush {
            return write_flush(g, data, self.l.client_timeout).await;
        }
        match timed(
            self.timer,
            self.l.client_timeout,
            g.inner_mut().write_all(data),
        )
        .await
        {
            Ok(()) => Ok(()),
            Err((_, e)) => Err(e),
        }
    }

    /// After a 101: the handshake's answer to the client, then bytes both ways until either
    /// side closes (as [`crate::policy::UPGRADE_HALF_CLOSE`] says), the tunnel idles for the
    /// upstream's `read_timeout`, or shutdown.
    async fn tunnel(
        &mut self,
        g: &mut Guarded,
        mut up: TcpStream,
        rbuf: Vec<u8>,
        h: RespHead,
    ) -> Result<bool, Failure> {
        let mut out = h.head;
        // frames the backend sent right behind its 101
        let early = rbuf.len() - h.head_len;
        out.extend_from_slice(&rbuf[h.head_len..]);
        if write_flush(g, &out, self.l.client_timeout).await.is_err() {
            return Err(Failure::Cut);
        }
        // not held for the tunnel's life, which may be hours of idling
        drop((out, rbuf));
        if self.shutdown.is_none() {
            return Err(Failure::Cut);
        }
        g.release();
        if let crate::net::splice::Splice::Done(_, down) = crate::net::splice::splice(
            crate::net::splice::Client::over_socket(g),
            &mut up,
            self.pool.read_timeout,
            crate::net::splice::Ends {
                half_close: crate::policy::UPGRADE_HALF_CLOSE,
                client_closes: false,
            },
        )
        .await
        {
            self.bytes_out = early + down as usize;
        }
        Ok(false)
    }

    /// The next piece of a response body into `rbuf` (cleared first). `None`: the backend
    /// closed the connection, which ends a close-delimited body; for any other framing that
    /// is a cut response, as is a read error or timeout.
    ///
    /// Which buffer is read into: [`reuses_body_buf`].
    pub async fn read_body(
        &mut self,
        up: &mut TcpStream,
        rbuf: &mut Vec<u8>,
        framing: Framing,
    ) -> Result<Option<usize>, Failure> {
        if reuses_body_buf(rbuf) {
            rbuf.clear();
        } else {
            *rbuf = Vec::new();
        }
        let read = recv_buf_room(up, rbuf, BODY_BUF);
        match timed(self.timer, self.try_timeout, read).await {
            Ok(0) if framing == Framing::Close => Ok(None),
            Ok(0) => {
                warn!(
                    "{}: backend {} closed the connection mid-body",
                    self.l.name,
                    self.slot_label()
                );
                Err(Failure::Cut)
            }
            Ok(n) => Ok(Some(n)),
            Err((_, e)) => {
                warn!(
                    "{}: reading the body from backend {}: {e}",
                    self.l.name,
                    self.slot_label()
                );
                Err(Failure::Cut)
            }
        }
    }

    /// A chunked body that stopped parsing after the head was sent: the response is cut.
    pub fn bad_chunk(&self, e: crate::http::chunked::BadChunk) -> Failure {
        warn!(
            "{}: bad chunked body from backend {}: {}",
            self.l.name,
            self.slot_label(),
            e.0
        );
        Failure::Cut
    }
}

/// Whether a response body's next read goes into `rbuf` again (cleared) rather than into a
/// new buffer made when there is something to read. Only a body-sized buffer that its last
/// read filled is kept: one that a read left short had emptied the socket, so the next
/// read likely waits, and a slow stream's answer (server-sent events, a long poll) keeps
/// no buffer between its pieces; and the head's buffer (16 KiB) is not a body's, even full:
/// kept, a large body went through it a quarter of [`BODY_BUF`] a read, about twice the
/// system calls per 64 KiB answer (benches/load, 2026-12-07 08:02: 12.1 against 6.7).
pub(in crate::http::fast) fn reuses_body_buf(rbuf: &Vec<u8>) -> bool {
    rbuf.len() == rbuf.capacity() && rbuf.capacity() >= BODY_BUF
}

#[cfg(test)]
mod buf_tests {
    use super::*;

    #[test]
    fn only_a_filled_body_sized_buffer_is_read_into_again() {
        let mut full = vec![0u8; BODY_BUF];
        assert!(reuses_body_buf(&full));
        full.truncate(BODY_BUF - 1);
        assert!(!reuses_body_buf(&full), "a read left it short");
        let head = vec![0u8; crate::http::fast::RESP_BUF];
        assert!(!reuses_body_buf(&head), "the head's buffer, though full");
        assert!(!reuses_body_buf(&Vec::new()), "no buffer yet");
    }
}
