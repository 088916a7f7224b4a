//! Interim (1xx) responses on the lean engine's HTTP/3 path: the exchange hands over the raw
//! HTTP/1 heads it forwards ([`crate::policy::interim`]), and each goes out as a HEADERS frame
//! of its own while the exchange waits for the final head (RFC 9114 4.1).

use crate::policy::fields::{self, Field};
use bytes::Bytes;
use h3::server::RequestStream;
use std::future::Future;
use tokio::sync::mpsc::UnboundedReceiver;

type Send = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// Run `exchange` to its end, writing the interim heads it forwards meanwhile, all of them
/// before it returns (the final head is written after).
pub async fn alongside<F: Future>(
    exchange: F,
    heads: &mut UnboundedReceiver<Bytes>,
    send: &mut Send,
) -> F::Output {
    tokio::pin!(exchange);
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            r = &mut exchange => {
                while let Ok(h) = heads.try_recv() {
                    write(send, &h).await;
                }
                return r;
            }
            h = heads.recv(), if open => match h {
                Some(h) => write(send, &h).await,
                None => open = false,
            },
        }
    }
}

/// One raw interim head as a HEADERS frame; a client gone shows on the final head's write.
async fn write(send: &mut Send, raw: &[u8]) {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hdrs);
    let Ok(httparse::Status::Complete(_)) = resp.parse(raw) else {
        return;
    };
    let Some(code) = resp.code else { return };
    let mut r = http::Response::builder().status(code);
    for f in resp.headers.iter() {
        // connection-specific fields have no place in HTTP/3 (RFC 9114 4.2)
        if matches!(
            fields::classify(f.name.as_bytes()),
            Field::Connection | Field::HopByHop | Field::TransferEncoding | Field::Upgrade
        ) {
            continue;
        }
        r = r.header(f.name, f.value);
    }
    if let Ok(r) = r.body(()) {
        let _ = send.send_response(r).await;
    }
}
