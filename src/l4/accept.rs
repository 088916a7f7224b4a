//! Accepting the PROXY protocol from trusted load balancers in front of us.
//!
//! Pingora takes a connection's client address from the stream's socket digest
//! (`session.client_addr()` reads `SocketDigest::peer_addr`, a once-cell). So after reading a
//! header we replace the stream's digest with one whose peer address is the header's source;
//! from then on everything that asks for the client address (X-Forwarded-For, consistent
//! hashing, ACLs, logs, the L4 splice) gets the real client without knowing about PROXY.
//!
//! Where the header is read depends on the listener:
//! - plain listeners (http, tcp, tls_passthrough): at the start of `process_new`. For HTTP
//!   that is [`AcceptProxyApp`], a `ServerApp` wrapped around Pingora's HTTP app; it also
//!   drives keep-alive reuse itself so the header is read once per connection, not per request.
//! - TLS-terminating listeners (https, and tcp with `tls:`): a pre-TLS step
//!   ([`PreTlsProcess`], in the chain [`pre_tls`] builds for the accept loop), since
//!   the header comes before the ClientHello. The TLS stream reports the digest of the TCP
//!   stream beneath it, so the override is seen through TLS as well.
//!
//! A connection from outside `trusted_proxies`, or without a valid header in time, is closed.

use super::proxy_protocol::{read_header, Header};
use crate::config::cidr::{any_contains, Cidr};
use crate::config::{ListenerSpec, PROXY_HEADER_TIMEOUT};
use crate::net::listen::peer_addr;
use async_trait::async_trait;
use log::warn;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::protocols::{Stream, IO};
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

pub struct ProxyAccept {
    listener: String,
    trusted: Vec<Cidr>,
}

/// The addresses a PROXY header carried.
#[derive(Debug, Clone, Copy)]
pub struct Proxied {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

pub fn local_of(io: &dyn IO) -> Option<SocketAddr> {
    io.get_socket_digest()
        .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
}

impl ProxyAccept {
    pub fn new(listener: &str, trusted: &[Cidr]) -> ProxyAccept {
        ProxyAccept {
            listener: listener.to_string(),
            trusted: trusted.to_vec(),
        }
    }

    /// Check the peer, read the header and make its source the stream's peer address.
    /// `Ok(None)` is a LOCAL/UNKNOWN header: the connection keeps its own address.
    pub async fn apply(&self, io: &mut L4Stream) -> Result<Option<Proxied>, String> {
        let Some(peer) = peer_addr(io) else {
            return Err("connection without a peer address".into());
        };
        if !any_contains(&self.trusted, peer.ip()) {
            return Err(format!(
                "{peer} is not in trusted_proxies; PROXY header refused"
            ));
        }
        let (header, rest) = match tokio::time::timeout(PROXY_HEADER_TIMEOUT, read_header(io)).await
        {
            Err(_) => {
                return Err(format!(
                    "{peer}: no PROXY header within {PROXY_HEADER_TIMEOUT:?}"
                ))
            }
            Ok(Err(e)) => return Err(format!("{peer}: bad PROXY header: {e}")),
            Ok(Ok(h)) => h,
        };
        io.rewind(&rest);
        let Header::Proxy { src, dst } = header else {
            return Ok(None);
        };
        let digest = SocketDigest::from_raw_fd(io.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PSocketAddr::Inet(src)));
        // The header's destination too: after a pre-TLS read it is the only place left to
        // carry it to a `send_proxy_protocol` backend.
        let _ = digest.local_addr.set(Some(PSocketAddr::Inet(dst)));
        io.set_socket_digest(digest);
        Ok(Some(Proxied { src, dst }))
    }

    /// [`Self::apply`] on a stream as Pingora hands it to a `ServerApp`.
    pub async fn apply_stream(&self, io: Stream) -> Result<(Stream, Option<Proxied>), String> {
        let mut l4 = io
            .into_any()
            .downcast::<L4Stream>()
            .map_err(|_| "the PROXY protocol needs a plain TCP stream".to_string())?;
        let p = self.apply(&mut l4).await?;
        Ok((l4, p))
    }

    pub fn listener(&self) -> &str {
        &self.listener
    }
}

#[async_trait]
impl PreTlsProcess for ProxyAccept {
    async fn process(&self, stream: &mut L4Stream) -> pingora_core::Result<()> {
        match self.apply(stream).await {
            Ok(_) => Ok(()),
            Err(e) => {
                warn!("{}: {e}", self.listener);
                pingora_core::Error::e_explain(pingora_core::ErrorType::AcceptError, e)
            }
        }
    }
}

/// The step between accept and the ClientHello when `l` terminates TLS: the PROXY reader
/// when `l` accepts the PROXY protocol. (Pacing and the handshake deadline follow in
/// `crate::net::tls`.)
pub fn pre_tls(l: &ListenerSpec) -> Option<Arc<dyn PreTlsProcess>> {
    l.tls.as_ref()?;
    super::L4App::pre_tls(l).map(|a| a as Arc<dyn PreTlsProcess>)
}

/// A `ServerApp` that reads the PROXY header, then hands the connection to `inner`.
pub struct AcceptProxyApp<A> {
    inner: Arc<A>,
    accept: ProxyAccept,
}

impl<A> AcceptProxyApp<A> {
    pub fn new(inner: A, accept: ProxyAccept) -> Self {
        AcceptProxyApp {
            inner: Arc::new(inner),
            accept,
        }
    }
}

impl<A: ServerApp + Send + Sync + 'static> crate::net::listen::ConnApp for AcceptProxyApp<A> {}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for AcceptProxyApp<A> {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let io = match self.accept.apply_stream(io).await {
            Ok((io, _)) => io,
            Err(e) => {
                warn!("{}: {e}", self.accept.listener);
                return None;
            }
        };
        // Reused (keep-alive) connections stay here: handing them back to Pingora would call
        // us again and read a second header that is not there.
        let mut next = self.inner.process_new(io, shutdown).await;
        while let Some(io) = next {
            next = self.inner.process_new(io, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
