//! TLS listeners (https and TLS-terminating tcp) accept in the same loop as plaintext ones
//! ([`super::listen`]): one socket per thread without work stealing ([`super::shard`]), a
//! task per connection holding only the app's future, and the handshake in that task.
//!
//! Pingora's listening service accepted them before: one socket whatever the thread count,
//! each connection spawned on a thread picked at random (with no work stealing, half of
//! them woke another thread), a 64 KiB read buffer under OpenSSL for the connection's life,
//! and a task sized for its handshake future for as long as the connection lived. Here the
//! handshake is Pingora's own (`handshake_with_callback`, the same certificate callback),
//! run after the listener's pre-TLS steps (PROXY header, pacing).
//!
//! `tls.handshake_timeout` bounds the steps and the handshake together, as a timer on the
//! connection's own task (a slowloris on TLS holds a socket for at most that long; Pingora's
//! listener allowed 60 s). Dropping the handshake's future closes the socket.

use super::listen::{serve_reused, Accepted, ConnApp, ConnFuture, PlainTcp};
use crate::tls::ServerTls;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::server::handshake_with_callback;
use pingora_core::protocols::{GetSocketDigest, Stream};
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;

/// An app behind a TLS handshake: what the accept loop runs for a TLS listener.
pub struct TlsConn<A> {
    name: String,
    inner: Arc<A>,
    tls: ServerTls,
    /// The step between accept and the ClientHello (a PROXY header).
    pre: Option<Arc<dyn PreTlsProcess>>,
}

impl<A: ConnApp> TlsConn<A> {
    pub fn new(name: &str, inner: A, tls: ServerTls, pre: Option<Arc<dyn PreTlsProcess>>) -> Self {
        TlsConn {
            name: name.to_string(),
            inner: Arc::new(inner),
            tls,
            pre,
        }
    }

    /// The pre-TLS steps and the handshake on an accepted connection, within the listener's
    /// `handshake_timeout`: the TLS stream, or `None` once the failure is logged (the
    /// connection is closed by the drop).
    async fn handshake(&self, s: Stream) -> Option<Stream> {
        let t = self.tls.handshake_timeout;
        match tokio::time::timeout(t, self.steps(s)).await {
            Ok(s) => s,
            Err(_) => {
                // a slowloris on TLS: a silent socket, or a ClientHello that never ends
                log::info!(
                    "{}: TLS handshake not complete after {t:?}: closing",
                    self.name
                );
                None
            }
        }
    }

    async fn steps(&self, s: Stream) -> Option<Stream> {
        // Our plaintext socket, unless a pre-TLS step needs Pingora's L4 stream (the accept
        // loop makes which, see `lean` where the server starts TLS listeners).
        let any = s.into_any();
        let sock = match any.downcast::<PlainTcp>() {
            Ok(tcp) => Ok(tcp),
            Err(any) => match any.downcast::<L4Stream>() {
                Ok(l4) => Err(l4),
                Err(_) => {
                    log::error!(
                        "{}: a TLS listener was handed a stream that is not TCP",
                        self.name
                    );
                    return None;
                }
            },
        };
        let (mut io, peer) = match (sock, &self.pre) {
            (Ok(tcp), None) => {
                let peer = tcp.peer();
                (super::tls_io::Gathered::new(*tcp), Some(peer))
            }
            (Ok(_), Some(_)) => {
                log::error!("{}: a PROXY header is due, on a plain socket", self.name);
                return None;
            }
            (Err(mut l4), pre) => {
                if let Some(pre) = pre {
                    if let Err(e) = pre.process(&mut l4).await {
                        // the steps log what the operator needs (a bad PROXY header); a
                        // client that leaves before its ClientHello is not news
                        log::debug!("{}: before the TLS handshake: {e}", self.name);
                        return None;
                    }
                }
                // read before the handshake takes the stream (after a PROXY header, its
                // source); the app reads it again from the digest's cache
                let peer = l4
                    .get_socket_digest()
                    .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
                (super::tls_io::Gathered::new(*l4), peer)
            }
        };
        let who = || peer.map_or_else(|| "-".to_string(), |a| a.ip().to_string());
        // A handshake's first flight costs its thread a few hundred microseconds: it joins
        // the thread's line only once its ClientHello is in, so a silent connection holds up
        // nobody. That first read is the handshake's own.
        match io.read_ahead().await {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => {
                log::debug!("{}: waiting for the ClientHello: {e}", self.name);
                return None;
            }
        }
        crate::tls::pace::handshake_turn().await;
        match handshake_with_callback(&self.tls.acceptor, io, self.tls.callbacks.as_ref()).await {
            Ok(mut s) => {
                s.get_mut().handshake_done();
                Some(Box::new(s))
            }
            Err(e) => {
                // a client's failure (no shared version or cipher, a scanner, a closed
                // socket): info, as nginx logs SSL_do_handshake() failures
                log::info!("{}: TLS handshake with {} failed: {e}", self.name, who());
                None
            }
        }
    }
}

#[async_trait]
impl<A: ConnApp> ServerApp for TlsConn<A> {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let s = self.handshake(io).await?;
        serve_reused(&self.inner, s, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

impl<A: ConnApp> ConnApp for TlsConn<A> {
    fn connection(self: Arc<Self>, a: Accepted, shutdown: ShutdownWatch) -> ConnFuture {
        Box::pin(async move {
            // Boxed: a future is as large as its largest state, and the handshake's would
            // otherwise stay allocated for as long as the connection lives.
            let handshake = Box::pin(self.handshake(a.settle()?));
            let s = handshake.await?;
            self.inner
                .clone()
                .connection(Accepted::new(s), shutdown)
                .await
        })
    }
}
