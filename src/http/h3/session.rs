//! One HTTP/3 request stream as a Pingora downstream session (its `custom` session kind), so
//! the general engine runs every phase on it: the cache (fill, collapsed forwarding,
//! revalidation, stale-if-error), retries, the policy's edits.
//!
//! The request body is read from the QUIC stream only when Pingora asks for the next piece,
//! so QUIC's flow control is the back-pressure; the response goes out as HEADERS and DATA
//! frames, interim (1xx) heads first when the policy forwards them (RFC 9114 4.1 allows
//! any number before the final head). Giving up mid-response resets the stream, which the
//! client cannot mistake for a complete response.

use crate::policy::interim;
use async_trait::async_trait;
use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::server::RequestStream;
use http::HeaderMap;
use pingora_core::protocols::http::body_buffer::FixedBuffer;
use pingora_core::protocols::http::custom::server::Session;
use pingora_core::protocols::http::custom::CustomMessageWrite;
use pingora_core::protocols::http::HttpTask;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::Digest;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::Mutex;
use std::time::Duration;

type SendHalf = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = super::body::Body;
type MessageReader =
    Box<dyn futures_core::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>;

/// Request bodies held for a retry on another backend, as Pingora's own sessions hold them.
const RETRY_BUFFER: usize = 64 * 1024;

/// The stream's two halves. The session must be `Sync`, which h3-quinn's halves are not
/// (they hold boxed futures); they are only reached through `&mut self` (`Mutex::get_mut`,
/// never locked), so nothing is shared.
struct Halves {
    send: SendHalf,
    recv: RecvHalf,
}

pub struct H3Session {
    req: RequestHeader,
    halves: Mutex<Halves>,
    /// A first piece of the body, read ahead to learn whether there is one.
    first: Option<Bytes>,
    /// The request stream ended (no more body).
    recv_done: bool,
    body_read: usize,
    body_sent: usize,
    retry: Option<FixedBuffer>,
    written: Option<Box<ResponseHeader>>,
    /// The response ended (or was reset): nothing more goes out.
    ended: bool,
    interim: interim::Client,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
    client: Option<SocketAddr>,
    server: Option<SocketAddr>,
}

/// What the session needs besides the stream.
pub struct Parts {
    /// What was read ahead of the body: its first piece, and whether the stream ended.
    pub first: Option<Bytes>,
    pub recv_done: bool,
    /// The client's read and write timeout.
    pub timeout: Duration,
    pub client: std::net::SocketAddr,
    pub server: std::net::SocketAddr,
}

fn down(e: ErrorType, why: &'static str) -> Box<Error> {
    let mut e = Error::explain(e, why);
    e.as_down();
    e
}

async fn within<T>(
    t: Option<Duration>,
    f: impl std::future::Future<Output = Result<T>>,
    timed_out: ErrorType,
) -> Result<T> {
    match t {
        Some(t) => match tokio::time::timeout(t, f).await {
            Ok(r) => r,
            Err(_) => Err(down(timed_out, "HTTP/3 stream timed out")),
        },
        None => f.await,
    }
}

impl H3Session {
    pub fn new(req: RequestHeader, send: SendHalf, recv: RecvHalf, p: Parts) -> H3Session {
        let expects_continue = req
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        H3Session {
            req,
            halves: Mutex::new(Halves { send, recv }),
            first: p.first,
            recv_done: p.recv_done,
            body_read: 0,
            body_sent: 0,
            retry: None,
            written: None,
            ended: false,
            interim: interim::Client {
                http10: false,
                h2: false,
                expects_continue,
            },
            read_timeout: Some(p.timeout),
            write_timeout: Some(p.timeout),
            drain_timeout: Some(p.timeout),
            client: Some(SocketAddr::Inet(p.client)),
            server: Some(SocketAddr::Inet(p.server)),
        }
    }

    fn halves(&mut self) -> &mut Halves {
        self.halves.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    /// The next piece of the request body from the stream; `None` at its end.
    async fn next_piece(&mut self) -> Result<Option<Bytes>> {
        loop {
            let got = self.halves().recv.data().await;
            match got {
                Ok(Some(mut b)) => {
                    let b = b.copy_to_bytes(b.remaining());
                    if !b.is_empty() {
                        return Ok(Some(b));
                    }
                }
                Ok(None) => {
                    self.recv_done = true;
                    return Ok(None);
                }
                Err(_) => {
                    return Err(down(
                        ErrorType::ReadError,
                        "while reading the HTTP/3 request body",
                    ))
                }
            }
        }
    }

    async fn send_head(&mut self, resp: &ResponseHeader) -> Result<()> {
        let mut parts = resp.as_owned_parts();
        // connection-specific fields have no place in HTTP/3 (RFC 9114 4.2)
        for n in crate::policy::fields::RESPONSE_HOP_BY_HOP {
            parts.headers.remove(*n);
        }
        parts.headers.remove(http::header::CONNECTION);
        parts.headers.remove(http::header::TRANSFER_ENCODING);
        parts.headers.remove(http::header::UPGRADE);
        crate::policy::edit::date_if_missing(parts.status, &mut parts.headers);
        let r = http::Response::from_parts(parts, ());
        let t = self.write_timeout;
        let send = &mut self.halves().send;
        let f = async {
            send.send_response(r).await.map_err(|_| {
                down(
                    ErrorType::WriteError,
                    "while writing the HTTP/3 response head",
                )
            })
        };
        within(t, f, ErrorType::WriteTimedout).await
    }

    async fn end(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.ended, true) {
            return Ok(());
        }
        let t = self.write_timeout;
        let send = &mut self.halves().send;
        let f = async {
            send.finish()
                .await
                .map_err(|_| down(ErrorType::WriteError, "while ending the HTTP/3 response"))
        };
        within(t, f, ErrorType::WriteTimedout).await
    }
}

#[async_trait]
impl Session for H3Session {
    fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.req
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        let piece = match self.first.take() {
            Some(b) => Some(b),
            None if self.recv_done => None,
            None => {
                let t = self.read_timeout;
                within(t, self.next_piece(), ErrorType::ReadTimedout).await?
            }
        };
        if let Some(b) = &piece {
            self.body_read += b.len();
            if let Some(r) = self.retry.as_mut() {
                r.write_to_buffer(b);
            }
        }
        Ok(piece)
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        self.first = None;
        let t = self.drain_timeout;
        let drain = async {
            while !self.recv_done {
                if let Some(b) = self.next_piece().await? {
                    self.body_read += b.len();
                }
            }
            Ok(())
        };
        within(t, drain, ErrorType::ReadTimedout).await
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        let code = resp.status.as_u16();
        if resp.status.is_informational() {
            if code == 101 {
                // no upgrades over HTTP/3 (RFC 9114 4.5)
                return Err(down(
                    ErrorType::InternalError,
                    "a 101 cannot be sent over HTTP/3",
                ));
            }
            if self.written.is_none() && interim::forwarded(code, self.interim) {
                self.send_head(&resp).await?;
            }
            return Ok(());
        }
        if self.written.is_some() {
            log::warn!("HTTP/3 response head already sent, not sending another");
            return Ok(());
        }
        self.send_head(&resp).await?;
        self.written = Some(resp);
        if end {
            self.end().await?;
        }
        Ok(())
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        self.write_response_header(Box::new(resp.clone()), end)
            .await
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        if !data.is_empty() {
            let n = data.len();
            let t = self.write_timeout;
            let send = &mut self.halves().send;
            let f = async {
                send.send_data(data).await.map_err(|_| {
                    down(
                        ErrorType::WriteError,
                        "while writing the HTTP/3 response body",
                    )
                })
            };
            within(t, f, ErrorType::WriteTimedout).await?;
            self.body_sent += n;
        }
        if end {
            self.end().await?;
        }
        Ok(())
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        let t = self.write_timeout;
        let send = &mut self.halves().send;
        let f = async {
            send.send_trailers(trailers).await.map_err(|_| {
                down(
                    ErrorType::WriteError,
                    "while writing the HTTP/3 response trailers",
                )
            })
        };
        within(t, f, ErrorType::WriteTimedout).await?;
        self.end().await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        let mut end_stream = false;
        for task in tasks {
            end_stream = match task {
                HttpTask::Header(h, end) => {
                    self.write_response_header(h, end).await?;
                    end
                }
                HttpTask::Body(data, end) => {
                    if let Some(d) = data {
                        self.write_body(d, end).await?;
                    }
                    end
                }
                HttpTask::UpgradedBody(..) => {
                    return Err(down(
                        ErrorType::InternalError,
                        "an upgraded body on an HTTP/3 stream",
                    ))
                }
                HttpTask::Trailer(Some(t)) => {
                    self.write_trailers(*t).await?;
                    true
                }
                HttpTask::Trailer(None) | HttpTask::Done => true,
                HttpTask::Failed(e) => return Err(e),
            } || end_stream;
        }
        if end_stream {
            self.end().await?;
        }
        Ok(end_stream)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.write_timeout
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.drain_timeout = timeout;
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.drain_timeout
    }

    fn request_summary(&self) -> String {
        format!(
            "{} {}, Host: {} (HTTP/3)",
            self.req.method,
            self.req.uri.path_and_query().map_or("/", |p| p.as_str()),
            crate::http::request_host(&self.req).unwrap_or("-")
        )
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.written.as_deref()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        // a reset: the client must not take what it got for a whole response
        let h = self.halves();
        h.send.stop_stream(Code::H3_INTERNAL_ERROR);
        if !self.recv_done {
            self.halves().recv.stop();
        }
    }

    fn is_body_done(&mut self) -> bool {
        self.first.is_none() && (self.recv_done || self.is_body_empty())
    }

    async fn finish(&mut self) -> Result<()> {
        self.end().await
    }

    fn is_body_empty(&mut self) -> bool {
        self.body_read == 0
            && self.first.is_none()
            && (self.recv_done
                || self
                    .req
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() == b"0"))
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if no_body_expected || self.is_body_done() {
            // h3 tells nothing more about a request whose body is in; the response's
            // writes notice a client that went away
            std::future::pending::<()>().await;
        }
        self.read_body_bytes().await
    }

    fn body_bytes_sent(&self) -> usize {
        self.body_sent
    }

    fn body_bytes_read(&self) -> usize {
        self.body_read
    }

    fn digest(&self) -> Option<&Digest> {
        None
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        None
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.client.as_ref()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.server.as_ref()
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.req.method.as_str().as_bytes());
        out.push(b' ');
        let target = self.req.uri.path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (k, v) in self.req.headers.iter() {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Bytes::from(out)
    }

    fn enable_retry_buffering(&mut self) {
        if self.retry.is_none() {
            self.retry = Some(FixedBuffer::new(RETRY_BUFFER));
        }
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.retry.as_ref().is_some_and(|r| r.is_truncated())
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        self.retry.as_ref().and_then(|r| {
            if r.is_truncated() {
                None
            } else {
                r.get_buffer()
            }
        })
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(&mut self) -> Option<MessageReader> {
        None
    }

    fn restore_custom_message_reader(&mut self, _reader: MessageReader) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}
