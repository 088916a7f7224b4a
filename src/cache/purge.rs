//! `PURGE /path` removes a URL (every `Vary` variant of it) from the cache; `PURGE /prefix*`
//! removes every URL of that host that starts with the prefix.
//!
//! Handled in `request_filter` rather than through pingora's `is_purge` path because pingora
//! purges a single slot and leaves the other variants to be invalidated lazily, and it has no
//! notion of prefixes. Only clients inside the cache's `purge_from` networks may purge;
//! everyone else gets 403. The answer is 200 when something was removed and 404 otherwise,
//! and carries the store's accounted size so operators (and tests) can watch the bound.

use super::{policy, RouteCache};
use crate::config::cidr::Cidr;
use bytes::Bytes;
use log::{info, warn};
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Answer a PURGE request. Returns `Ok(true)` when the request was one (and was answered).
pub async fn handle(
    cache: &RouteCache,
    session: &mut Session,
    namespace: &str,
    tls: bool,
) -> Result<bool> {
    if session.req_header().method.as_str() != "PURGE" {
        return Ok(false);
    }
    let client = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let allowed = client.is_some_and(|ip| Cidr::any_contains(&cache.spec.purge_from, ip));
    let uri = session.req_header().uri.to_string();
    if !allowed {
        warn!(
            "{namespace}: PURGE {uri} refused for client {}",
            client.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
        );
        return reply(session, 403, None).await.map(|_| true);
    }
    let removed = match super::store() {
        None => 0,
        Some(store) => {
            let req = session.req_header();
            let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            match path.strip_suffix('*') {
                Some(prefix) => {
                    store.purge_prefix(&policy::key_text(namespace, tls, req, Some(prefix)))
                }
                None => store.purge_primary(&policy::cache_key(namespace, tls, req)),
            }
        }
    };
    info!("{namespace}: PURGE {uri} removed {removed} entries");
    let code = if removed > 0 { 200 } else { 404 };
    reply(session, code, Some(removed)).await.map(|_| true)
}

async fn reply(session: &mut Session, code: u16, removed: Option<usize>) -> Result<()> {
    let body = match removed {
        Some(n) => Bytes::from(format!("purged {n}\n")),
        None => Bytes::from_static(b"purge not allowed from this address\n"),
    };
    let mut resp = ResponseHeader::build(code, Some(8))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let (Some(n), Some(st)) = (removed, super::stats()) {
        resp.insert_header("x-purged", n.to_string())?;
        resp.insert_header("x-cache-size", st.lru_bytes.to_string())?;
        resp.insert_header("x-cache-stored-size", st.stored_bytes.to_string())?;
        resp.insert_header("x-cache-items", st.stored_items.to_string())?;
        resp.insert_header("x-cache-max-size", st.limit.to_string())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
