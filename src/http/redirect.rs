//! `redirect_https: true` on an http listener: every request gets a redirect to the same
//! host and path on https, before routing. 301 for GET and HEAD (cacheable, what browsers
//! expect), 308 for other methods so that clients repeat the method and body.

use crate::http::{request_host, respond};
use crate::policy::forwarded::strip_port;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// The https URL for a request, or None when its host cannot go into a URL safely.
pub fn location(host: &str, path_and_query: &str, https_port: u16) -> Option<String> {
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        crate::config::valid_hostname(host)
    };
    if !ok {
        return None;
    }
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Some(format!("https://{host}{port}{path}"))
}

pub async fn redirect(session: &mut Session, https_port: u16) -> Result<()> {
    let req = session.req_header();
    let pq = req
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let Some(url) = location(strip_port(request_host(req).unwrap_or("")), &pq, https_port) else {
        return respond(session, 400, true).await;
    };
    let safe = matches!(req.method, http::Method::GET | http::Method::HEAD);
    let code = if safe { 301 } else { 308 };
    let mut resp = ResponseHeader::build(code, Some(3))?;
    resp.insert_header(http::header::LOCATION, url)?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    if !safe {
        // The body was never read; closing is simpler and safer than draining it.
        resp.insert_header(http::header::CONNECTION, "close")?;
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), true).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::location;

    #[test]
    fn builds_https_urls() {
        assert_eq!(
            location("example.com", "/a?b=1", 443).as_deref(),
            Some("https://example.com/a?b=1")
        );
        assert_eq!(
            location("example.com", "/", 8443).as_deref(),
            Some("https://example.com:8443/")
        );
        assert_eq!(
            location("[::1]", "/x", 443).as_deref(),
            Some("https://[::1]/x")
        );
        assert_eq!(location("evil.com/@x", "/", 443), None);
        assert_eq!(location("", "/", 443), None);
    }
}
