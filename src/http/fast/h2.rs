//! HTTP/2 requests on the fast path.
//!
//! Pingora's HTTP/2 server (the `h2` crate) still parses the frames and hands each stream over
//! as a session; what is skipped is its generic proxy around that stream, which callgrind put
//! at about 70% of the instructions of an HTTP/2 request. A bodiless GET or HEAD for a route
//! the HTTP/1 fast path would take is forwarded to the backend as HTTP/1.1 (the `:authority`
//! becomes Host, split Cookie fields are joined, X-Forwarded-* set), and the response is
//! written back on the stream, with chunked bodies decoded. Everything else, and listeners with
//! a per-IP rate limit, keep Pingora's path, decided before anything is sent anywhere.

use super::*;
use bytes::Bytes;
use pingora_core::protocols::http::v2::server::HttpSession as H2Session;

/// Hop-by-hop and forwarding fields that are not copied from an HTTP/2 request.
fn skipped(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "cookie"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
    )
}

impl FastPath {
    /// Serve one HTTP/2 stream; `false` when it is for Pingora's path (nothing was done).
    pub async fn serve_h2(&self, s: &mut H2Session) -> bool {
        let l = &*self.listener;
        if l.rate.is_some() || !s.is_body_done() {
            return false;
        }
        let client = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let req = s.req_header();
        let method = req.method.as_str();
        if method != "GET" && method != "HEAD" {
            return false;
        }
        let host = req.uri.authority().map(|a| a.as_str()).or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        });
        let Some(host) = host else {
            return false;
        };
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        if !target.starts_with('/') {
            return false;
        }
        let Some(route) = l
            .router
            .find(strip_port(host), req.uri.path())
            .and_then(|p| l.router.get(p))
        else {
            return false;
        };
        if !Self::route_ok(route) || route.cache.is_some() {
            return false;
        }

        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut xff: Option<&[u8]> = None;
        for (name, value) in req.headers.iter() {
            let n = name.as_str();
            if n == "x-forwarded-for" && xff.is_none() {
                xff = Some(value.as_bytes());
            }
            if skipped(n) {
                continue;
            }
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
        for (i, c) in req.headers.get_all(http::header::COOKIE).iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"cookie: " } else { b"; " });
            out.extend_from_slice(c.as_bytes());
        }
        if req.headers.contains_key(http::header::COOKIE) {
            out.extend_from_slice(b"\r\n");
        }
        if let Some(ip) = client {
            out.extend_from_slice(b"x-forwarded-for: ");
            if let Some(prev) = xff.filter(|p| !p.is_empty() && p.len() < 400) {
                out.extend_from_slice(prev);
                out.extend_from_slice(b", ");
            }
            push_ip(&mut out, ip);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-proto: ");
        out.extend_from_slice(self.proto);
        out.extend_from_slice(b"\r\nx-forwarded-host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");

        let hash = match route.pool.selection {
            Selection::ConsistentHash => h2_hash(&route.pool.hash_key, client, target, req),
            _ => 0,
        };
        let head_only = method == "HEAD";

        let mut ex = Exchange {
            l,
            route,
            pool: &route.pool,
            pool_max: self.pool_max,
            obs: RequestObs::default(),
            pick: None,
            status: 0,
            bytes_out: 0,
            shutdown: None,
        };
        // The request's fields are read from the session again after the exchange (no
        // copies): only the response side writes to it.
        let head = ex
            .exchange(None, &out, 0, hash, (method, target), head_only, Down::H2)
            .await;
        let res = match head {
            Ok((up, rbuf, head)) => ex.respond_h2(s, up, rbuf, head).await,
            Err(e) => Err(e),
        };
        let slot = ex.pick.as_ref().map(|p| &*p.slot);
        let status = match res {
            Ok(()) => ex.status,
            Err(Failure::Answer(code, why)) => {
                warn!(
                    "{}: answering {code} for {} (backend {}): {why}",
                    l.name,
                    s.req_header().uri,
                    slot.map(|s| s.label.as_str()).unwrap_or("-")
                );
                ex.bytes_out = 0;
                if s.response_written().is_none() {
                    let _ = h2_page(s, code, head_only).await;
                }
                code
            }
            Err(Failure::Cut) => {
                // the response was cut: reset the stream rather than end it cleanly
                s.shutdown();
                ex.status
            }
        };
        let req = s.req_header();
        let header = |n: http::header::HeaderName| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        };
        let view = ReqView {
            client,
            method: req.method.as_str(),
            uri: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            version: "HTTP/2.0",
            host: req
                .uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_else(|| header(http::header::HOST)),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            bytes_in: 0,
        };
        observability::fast_request_done(
            &view,
            Some(route.id),
            slot,
            &ex.obs,
            status,
            ex.bytes_out,
            false,
        );
        true
    }
}

/// An address as text, IPv4 without the formatting machinery (this runs per request).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if *o >= 100 {
                    out.push(b'0' + o / 100);
                }
                if *o >= 10 {
                    out.push(b'0' + o / 10 % 10);
                }
                out.push(b'0' + o % 10);
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

fn h2_hash(
    key: &HashKey,
    client: Option<IpAddr>,
    target: &str,
    req: &pingora_http::RequestHeader,
) -> u64 {
    match key {
        HashKey::ClientIp => match client {
            Some(IpAddr::V4(v4)) => hash_bytes(&v4.octets()),
            Some(IpAddr::V6(v6)) => hash_bytes(&v6.octets()),
            None => 0,
        },
        HashKey::Uri => hash_bytes(target.as_bytes()),
        HashKey::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|v| hash_bytes(v.as_bytes()))
            .unwrap_or(0),
        HashKey::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|h| {
                h.as_bytes().split(|&b| b == b';').find_map(|part| {
                    part.trim_ascii()
                        .strip_prefix(name.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"="))
                })
            })
            .map(hash_bytes)
            .unwrap_or(0),
    }
}

/// One of the proxy's own pages on an HTTP/2 stream.
async fn h2_page(s: &mut H2Session, code: u16, head_only: bool) -> pingora_core::Result<()> {
    let body = super::super::error_page(code);
    let mut r = ResponseHeader::build(code, Some(3))?;
    r.insert_header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    r.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    r.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    s.write_response_header(Box::new(r), head_only)?;
    if !head_only {
        s.write_body(body, true).await?;
    }
    Ok(())
}

impl Exchange<'_> {
    /// Write the response on the HTTP/2 stream (chunked bodies decoded) and give the
    /// connection back to the pool when the body ended cleanly.
    async fn respond_h2(
        &mut self,
        s: &mut H2Session,
        mut up: TcpStream,
        mut rbuf: Vec<u8>,
        h: RespHead,
    ) -> Result<(), Failure> {
        self.status = h.code;
        let Some(resp) = h.h2 else {
            return Err(Failure::Answer(500, "no HTTP/2 response head".into()));
        };
        let mut upstream_keep = h.upstream_keep;
        let mut scanner = crate::http::chunked::ChunkedScanner::default();
        let mut left = 0u64;
        let mut data: Vec<u8> = Vec::new();
        let first = &rbuf[h.head_len..];
        let mut done = match h.framing {
            Framing::None => {
                upstream_keep &= first.is_empty();
                true
            }
            Framing::Length(n) => {
                let t = (first.len() as u64).min(n);
                data.extend_from_slice(&first[..t as usize]);
                left = n - t;
                upstream_keep &= first.len() as u64 <= n;
                left == 0
            }
            Framing::Chunked => match scanner.scan_into(first, Some(&mut data)) {
                Ok(crate::http::chunked::Scan::Done(k)) => {
                    upstream_keep &= k == first.len();
                    true
                }
                Ok(crate::http::chunked::Scan::More) => false,
                Err(e) => {
                    return Err(Failure::Answer(502, format!("bad chunked body: {}", e.0)));
                }
            },
            Framing::Close => {
                data.extend_from_slice(first);
                false
            }
        };
        let end_with_head = done && data.is_empty();
        if s.write_response_header(resp, end_with_head).is_err() {
            return Err(Failure::Cut);
        }
        if !end_with_head {
            self.bytes_out += data.len();
            if !data.is_empty() || done {
                let chunk = Bytes::from(std::mem::take(&mut data));
                if s.write_body(chunk, done).await.is_err() {
                    return Err(Failure::Cut);
                }
            }
        }
        if !done {
            rbuf = Vec::with_capacity(BODY_BUF);
        }
        while !done {
            let Some(n) = self.read_body(&mut up, &mut rbuf, h.framing).await? else {
                upstream_keep = false;
                if s.finish().is_err() {
                    return Err(Failure::Cut);
                }
                break;
            };
            let chunk = match h.framing {
                Framing::Length(_) => {
                    let t = (n as u64).min(left);
                    left -= t;
                    upstream_keep &= n as u64 == t || left > 0;
                    done = left == 0;
                    Bytes::copy_from_slice(&rbuf[..t as usize])
                }
                Framing::Chunked => {
                    let mut d = Vec::with_capacity(n);
                    match scanner.scan_into(&rbuf[..n], Some(&mut d)) {
                        Ok(crate::http::chunked::Scan::Done(k)) => {
                            upstream_keep &= k == n;
                            done = true;
                        }
                        Ok(crate::http::chunked::Scan::More) => {}
                        Err(e) => return Err(self.bad_chunk(e)),
                    }
                    Bytes::from(d)
                }
                _ => Bytes::copy_from_slice(&rbuf[..n]),
            };
            self.bytes_out += chunk.len();
            if (!chunk.is_empty() || done) && s.write_body(chunk, done).await.is_err() {
                return Err(Failure::Cut);
            }
        }
        if upstream_keep {
            self.give_back(up);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::push_ip;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.20.255.1",
            "127.0.0.1",
            "199.9.100.99",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("address");
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).expect("utf-8"), ip.to_string());
        }
    }
}
