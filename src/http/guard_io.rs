//! The guard passes Pingora's stream traits through to the stream it wraps; only a peek
//! sees the bytes it holds back first.

use super::Guarded;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{Peek, Shutdown, Ssl, ALPN};
use std::sync::Arc;

#[async_trait::async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::flush(self).await;
        self.inner.shutdown().await
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

crate::passthrough_digests!(Guarded, inner);

#[async_trait::async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if self.has_pending() {
            let p = self.pending.rest();
            let n = p.len().min(buf.len());
            buf[..n].copy_from_slice(&p[..n]);
            return Ok(n == buf.len());
        }
        self.inner.try_peek(buf).await
    }
}
