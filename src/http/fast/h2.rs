//! HTTP/2 requests on the fast path.
//!
//! Pingora's HTTP/2 server (the `h2` crate) still parses the frames and hands each stream over
//! as a session; what is skipped is its generic proxy around that stream, which callgrind put
//! at about 70% of the instructions of an HTTP/2 request. A bodiless GET or HEAD for a route
//! the HTTP/1 fast path would take is forwarded to the backend as HTTP/1.1 (the `:authority`
//! becomes Host, split Cookie fields are joined, X-Forwarded-* set), and the response is
//! written back on the stream, with chunked bodies decoded. A bodiless GET or HEAD that finds
//! a fresh entry on a cached route is answered from the store (`crate::http::cache_hit`, the
//! HTTP/3 engine's rule). Everything else keeps Pingora's path, decided before anything is
//! sent anywhere.

use super::deframe::Deframe;
use super::exchange::{Down, Exchange, Failure};
use super::response::RespHead;
use super::*;
use crate::lifecycle::idle::CoarseTimer;
use bytes::Bytes;
use pingora_core::protocols::http::v2::server::HttpSession as H2Session;
use pingora_http::ResponseHeader;
use tokio::net::TcpStream;

impl FastPath {
    /// Serve one HTTP/2 stream; `false` when it is for Pingora's path (nothing was done).
    pub async fn serve_h2(&self, s: &mut H2Session) -> bool {
        let l = &*self.listener;
        let client = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let req = s.req_header();
        let method = req.method.as_str();
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let t = HeadTraits {
            parsed: true,
            h2: true,
            origin_form: target.starts_with('/'),
            connect: method == "CONNECT",
            get: method == "GET",
            get_or_head: method == "GET" || method == "HEAD",
            body: !s.is_body_done(),
            length: crate::http::content_length(req),
            expect: req.headers.contains_key(http::header::EXPECT),
            max_forwards: req.headers.contains_key(http::header::MAX_FORWARDS)
                && fields::max_forwards_applies(method.as_bytes()),
            upgrade: req.headers.get(http::header::UPGRADE).map(|_| false),
            ..HeadTraits::default()
        };
        let mut head = super::super::request_head(client, req, t.length, RateCount::Local);
        let host = head.host;
        let route = l.route(&head);
        // a fresh hit on a cached route is answered here; only for a stream with no body,
        // which the answer would leave unread
        let hit = route
            .filter(|r| r.cache.is_some() && !t.body)
            .and_then(|r| crate::http::cache_hit::fresh_hit(l, r, req, host));
        if let Err(reason) = engine::choose(l, &t, route, hit.is_some()) {
            fell_back(reason);
            return false;
        }
        let trace = policy::trace::begin(
            req.headers
                .get_all(&fields::TRACEPARENT)
                .iter()
                .map(|v| v.as_bytes()),
        );
        head.rate = l.rate_count(client).await;
        let route = match l.admit_on(&head, route) {
            Verdict::Answer(a, route) => {
                let head_only = method == "HEAD";
                let status = a.status;
                let sent = h2_page(s, l, &a, head_only).await.unwrap_or(0);
                let mut obs = RequestObs::default();
                obs.trace = trace;
                let view = h2_view(s, client, &obs);
                observability::fast_request_done(
                    &view,
                    route.map(|r| r.id),
                    None,
                    &obs,
                    status,
                    sent,
                    false,
                );
                return true;
            }
            Verdict::Proxy(route) => route,
        };
        if let Some((h, c)) = hit {
            let head_only = method == "HEAD";
            let (status, sent) = h2_hit(s, l, &h, c, head_only).await;
            let mut obs = RequestObs::default();
            obs.trace = trace;
            let view = h2_view(s, client, &obs);
            observability::fast_request_done(&view, Some(route.id), None, &obs, status, sent, true);
            return true;
        }

        let mut out = Vec::with_capacity(512);
        let head = crate::http::UpstreamHead {
            method,
            target,
            host,
            length: crate::http::BodyLength::AsSent,
            client,
            tls: l.tls,
            trace: trace.as_ref(),
        };
        head.write(req, &mut out);

        let hash = policy::hash::of_request(&route.pool, client, req);
        let head_only = method == "HEAD";
        let mut obs = RequestObs::default();
        obs.trace = trace;
        // the stream's own: its waits are one at a time
        let mut timer = CoarseTimer::unarmed();
        let mut ex = Exchange::new(l, route, self.pool_max, obs, None, &mut timer);
        ex.sticky = policy::sticky::affinity(&route.pool, req);
        // The request's fields are read from the session again after the exchange (no
        // copies): only the response side writes to it.
        // The client may cancel the stream (RST_STREAM) while the backend works: that ends
        // the exchange at once, as a client-closed request. The method and target are copied
        // for the exchange, since watching the stream borrows the session.
        let (method, target) = (method.to_owned(), target.to_owned());
        // A body (of a declared length, within engine::H2_HELD_BODY) is read whole and goes
        // out with the head, as a request the exchange may send again.
        let body_len = t.length.filter(|_| t.body);
        let held = match body_len {
            Some(n) => read_held_body(s, n, l.client_timeout, &mut out).await,
            None => Ok(()),
        };
        let mirror = route.mirror.as_ref();
        let copy = mirror.filter(|m| m.sample(false) && m.fits(body_len.unwrap_or(0)));
        if let Some(p) = copy.and_then(|m| m.admit()) {
            crate::net::mirror::send(p, policy::mirror::h1_copy(&out));
        }
        // `biased`, the reset first: a cancel already read never lets the request out
        let head = match held {
            Err(e) => Some(Err(e)),
            Ok(()) => tokio::select! {
                biased;
                _ = s.idle() => None,
                head = ex.exchange(None, &mut out, 0, hash, (&method, &target), head_only, Down::H2) => Some(head),
            },
        };
        let mut reset = head.is_none();
        let res = match head {
            Some(Ok((up, rbuf, head))) => ex.respond_h2(s, up, rbuf, head).await,
            Some(Err(e)) => Err(e),
            None => Err(Failure::Cut),
        };
        if matches!(res, Err(Failure::Cut)) && !reset {
            // a write that failed because the client reset the stream meanwhile
            reset = matches!(
                tokio::time::timeout(Duration::ZERO, s.idle()).await,
                Ok(Ok(_))
            );
        }
        if !reset {
            ex.observe_outcome(&res);
        }
        let slot = ex.pick.as_ref().map(|p| &*p.slot);
        let status = match res {
            Ok(()) => ex.status,
            Err(Failure::Answer(why_status, why)) => {
                let code = why_status.status();
                log::warn!(
                    "{}: answering {code} for {} (backend {}): {why}",
                    l.name,
                    s.req_header().uri,
                    slot.map(|s| s.label.as_str()).unwrap_or("-")
                );
                ex.bytes_out = 0;
                if s.response_written().is_none() {
                    let a = why_status.answer().unwrap_or_else(|| Answer::new(code));
                    ex.bytes_out = h2_page(s, l, &a, head_only).await.unwrap_or(0);
                }
                code
            }
            Err(Failure::Cut) if reset => {
                log::info!(
                    "{}: client closed the request for {} (backend {})",
                    l.name,
                    s.req_header().uri,
                    slot.map(|s| s.label.as_str()).unwrap_or("-")
                );
                observability::client_closed(Some(route.id));
                0
            }
            Err(Failure::Cut) => {
                // the response was cut: reset the stream rather than end it cleanly
                s.shutdown();
                ex.status
            }
        };
        let view = h2_view(s, client, &ex.obs);
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

/// Read an HTTP/2 request's whole body (its declared `len`) onto `out`, each read within
/// `timeout`. h2 holds the stream to its Content-Length (a stream that sends more or less is
/// reset), so what ends cleanly is exactly `len` bytes.
async fn read_held_body(
    s: &mut H2Session,
    len: u64,
    timeout: Duration,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    // Room for what has arrived, not for what was declared: a client may declare 64 KiB on
    // each of its streams and send nothing.
    let mut read = 0u64;
    loop {
        match tokio::time::timeout(timeout, s.read_body_bytes()).await {
            Ok(Ok(Some(b))) => {
                read += b.len() as u64;
                if read > len {
                    return Err(Failure::Cut);
                }
                out.extend_from_slice(&b);
            }
            Ok(Ok(None)) if read == len => return Ok(()),
            Ok(_) => return Err(Failure::Cut),
            // nginx's client_body_timeout: 408
            Err(_) => {
                return Err(Failure::Answer(
                    crate::policy::answer::Failure::ClientTimeout,
                    "the client stalled mid-body".into(),
                ))
            }
        }
    }
}

/// The access-log view of an HTTP/2 request; the host as the policy reads it, the body
/// bytes as the session counted them (as the general engine reports them).
fn h2_view<'a>(s: &'a H2Session, client: Option<IpAddr>, obs: &RequestObs) -> ReqView<'a> {
    crate::http::req_view(s.req_header(), client, "HTTP/2.0", s.body_bytes_read(), obs)
}

/// A piece of the response body on the stream, ended as the session's own write timeout
/// would end it: when the client gives the stream no flow-control window for `d` (the
/// listener's `client_timeout`). The session's timeout is turned off for it: Pingora arms
/// a timer of its own for it (two, nested) whenever h2 has no capacity for the stream at
/// once, which is nearly every response, since h2 assigns capacity when it next polls the
/// connection. The stream's coarse timer, armed only then too, cost about 310 instructions
/// per request less (benches/instr, HTTP/2 GET).
async fn write_h2(
    s: &mut H2Session,
    timer: &mut CoarseTimer,
    d: Duration,
    data: Bytes,
    end: bool,
) -> pingora_core::Result<()> {
    s.set_write_timeout(None);
    match crate::net::deadline::within_on(timer, d, s.write_body(data, end)).await {
        Some(r) => r,
        None => pingora_core::Error::e_explain(
            pingora_core::ErrorType::WriteTimedout,
            format!("writing an HTTP/2 response body, timeout: {d:?}"),
        ),
    }
}

/// One of the proxy's own pages on an HTTP/2 stream; the body bytes sent.
async fn h2_page(
    s: &mut H2Session,
    l: &Listener,
    a: &Answer,
    head_only: bool,
) -> pingora_core::Result<usize> {
    let body = a.body();
    let fields = a.fields(body.len());
    let mut r = ResponseHeader::build_no_case(a.status, Some(fields.len()))?;
    for (k, v) in fields {
        r.insert_header(k, v)?;
    }
    s.write_response_header(Box::new(r), head_only)?;
    if head_only {
        return Ok(0);
    }
    let n = body.len();
    let mut timer = CoarseTimer::unarmed();
    write_h2(s, &mut timer, l.client_timeout, body, true).await?;
    Ok(n)
}

/// Answer a fresh cache hit on an HTTP/2 stream: its status and the body bytes sent.
async fn h2_hit(
    s: &mut H2Session,
    l: &Listener,
    h: &crate::cache::storage::FastHit,
    c: &crate::cache::RouteCache,
    head_only: bool,
) -> (u16, usize) {
    crate::cache::fast_hit_served(h);
    let resp = crate::http::cache_hit::head(h, c).map(|r| ResponseHeader::from(r.into_parts().0));
    let Some(mut resp) = resp else {
        let sent = h2_page(s, l, &Answer::new(500), head_only)
            .await
            .unwrap_or(0);
        return (500, sent);
    };
    if let Some(v) = crate::policy::edit::alt_svc(l) {
        let _ = resp.insert_header(http::header::ALT_SVC, v.clone());
    }
    let status = resp.status.as_u16();
    let body = h.body().clone();
    let n = if head_only { 0 } else { body.len() };
    if s.write_response_header(Box::new(resp), n == 0).is_err() {
        return (status, 0);
    }
    let mut timer = CoarseTimer::unarmed();
    if n > 0
        && write_h2(s, &mut timer, l.client_timeout, body, true)
            .await
            .is_err()
    {
        return (status, 0);
    }
    (status, n)
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
        let Some(mut resp) = h.h2 else {
            return Err(Failure::Answer(
                crate::policy::answer::Failure::Internal,
                "no HTTP/2 response head".into(),
            ));
        };
        if let Some(c) = self.sticky_cookie() {
            let _ = resp.append_header(http::header::SET_COOKIE, c);
        }
        if let Some(v) = crate::policy::edit::alt_svc(self.listener()) {
            let _ = resp.insert_header(http::header::ALT_SVC, v.clone());
        }
        let mut body = Deframe::new(h.framing, h.upstream_keep);
        let mut data: Vec<u8> = Vec::new();
        // the body bytes that came with the head: a bad chunk there is answered, no head
        // having gone out yet
        if let Err(e) = body.take(&rbuf[h.head_len..], &mut data) {
            return Err(Failure::Answer(
                crate::policy::answer::Failure::BadResponse,
                format!("bad chunked body: {}", e.0),
            ));
        }
        let done = body.done();
        let end_with_head = done && data.is_empty();
        if s.write_response_header(resp, end_with_head).is_err() {
            return Err(Failure::Cut);
        }
        if !end_with_head {
            self.bytes_out += data.len();
            if !data.is_empty() || done {
                let chunk = Bytes::from(std::mem::take(&mut data));
                let d = self.listener().client_timeout;
                if write_h2(s, self.timer, d, chunk, done).await.is_err() {
                    return Err(Failure::Cut);
                }
            }
        }
        while !body.done() {
            let Some(n) = self.read_body(&mut up, &mut rbuf, h.framing).await? else {
                body.closed();
                if s.finish().is_err() {
                    return Err(Failure::Cut);
                }
                break;
            };
            let mut d = Vec::with_capacity(n);
            if let Err(e) = body.take(&rbuf[..n], &mut d) {
                return Err(self.bad_chunk(e));
            }
            let chunk = Bytes::from(d);
            let done = body.done();
            self.bytes_out += chunk.len();
            let d = self.listener().client_timeout;
            if (!chunk.is_empty() || done) && write_h2(s, self.timer, d, chunk, done).await.is_err()
            {
                return Err(Failure::Cut);
            }
        }
        if body.keep() {
            self.give_back(up);
        }
        Ok(())
    }
}
