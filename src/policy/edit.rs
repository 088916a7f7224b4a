//! The header edits of [`super::fields`] and [`super::forwarded`], applied to the header maps
//! of the engines that hold one (Pingora's phases, HTTP/2 streams). The lean HTTP/1 engine
//! applies the same rules to bytes as it copies them.

use super::fields::{self, Field};
use super::forwarded;
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

/// Names a message's `Connection` fields nominate, lower-cased. `close` is one: RFC 9110
/// §7.6.1 drops a field named by any connection option. `keep-alive` and `upgrade` are left
/// out: their fields are hop-by-hop anyway, and an upgrade that is relayed restates its own.
fn nominated_names(map: &http::HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for v in map.get_all(http::header::CONNECTION) {
        for t in fields::tokens(v.as_bytes()) {
            if t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"upgrade") {
                continue;
            }
            if let Ok(s) = std::str::from_utf8(t) {
                out.push(s.to_ascii_lowercase());
            }
        }
    }
    out
}

/// The `Via` entry of a forward proxy that names itself (RFC 9110 §7.6.3: protocol version
/// and a pseudonym, never the host's name).
pub const VIA: &str = "1.1 stepstone";

/// What the proxy tells the next hop about the client and itself, on top of the edits every
/// request gets.
#[derive(Clone, Copy, Debug)]
pub enum Announce<'a> {
    /// A reverse proxy's: the X-Forwarded-For chain extended by `client`, X-Forwarded-Proto
    /// (`tls`) and X-Forwarded-Host (`host`, the request's), the incoming ones replaced.
    Reverse {
        client: Option<IpAddr>,
        tls: bool,
        host: Option<&'a str>,
    },
    /// A forward proxy that names itself, as Squid does by default: `Via: 1.1 stepstone` and
    /// the X-Forwarded-For chain extended by `client`.
    Via { client: Option<IpAddr> },
    /// Nothing: an anonymous forward proxy (`forward::anonymity` then removes what could
    /// still name the client).
    Nothing,
}

/// The request as it goes upstream, from any engine that holds a header map and for every
/// listener kind (reverse routes, the mirror's copy, the forward proxy): hop-by-hop fields
/// and those `Connection` nominates dropped, Content-Length normalised, underscored names
/// dropped, for a relayed upgrade (`upgrade`, see [`relayed_upgrade`]) the upgrade restated,
/// a TRACE's or OPTIONS's `Max-Forwards` counted down ([`fields::max_forwards`]), what
/// [`Announce`] says added, and with tracing on the proxy's `traceparent`.
pub fn request(
    req: &mut RequestHeader,
    upgrade: Option<&http::HeaderValue>,
    announce: Announce<'_>,
    from_h2: bool,
    to_h2: bool,
    trace: Option<&crate::observability::tracing::TraceCtx>,
) -> pingora_core::Result<()> {
    // `TE: trailers` is the one TE an HTTP/2 request may carry (RFC 9113 §8.2.2), and gRPC
    // servers refuse a call without it: kept for an HTTP/2 upstream, dropped otherwise.
    let te_trailers = to_h2
        && req.headers.get_all(http::header::TE).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
    // HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
    if from_h2
        && req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .nth(1)
            .is_some()
    {
        let joined: Vec<&[u8]> = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if let Ok(v) = http::HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            req.insert_header(http::header::COOKIE, v)?;
        }
    }
    let client = match announce {
        Announce::Reverse { client, .. } | Announce::Via { client } => client,
        Announce::Nothing => None,
    };
    // the incoming chain is read before the edit drops its fields
    let xff = client.map(|ip| {
        let mut v = Vec::with_capacity(64);
        let prev = req.headers.get_all(&fields::X_FORWARDED_FOR);
        forwarded::x_forwarded_for(prev.iter().map(|p| p.as_bytes()), ip, &mut v);
        v
    });
    if let Some(n) = normalise_length(&req.headers) {
        req.insert_header(http::header::CONTENT_LENGTH, n)?;
    }
    for n in nominated_names(&req.headers) {
        req.remove_header(n.as_str());
    }
    for n in fields::REQUEST_DROPPED {
        req.remove_header(*n);
    }
    if te_trailers {
        req.insert_header(http::header::TE, "trailers")?;
    }
    let method = req.method.as_str().as_bytes();
    if fields::max_forwards_applies(method) {
        let values = req.headers.get_all(http::header::MAX_FORWARDS);
        let values = values.iter().map(|v| v.as_bytes());
        if let fields::MaxForwards::Forward(n) = fields::max_forwards(method, values) {
            req.insert_header(http::header::MAX_FORWARDS, n)?;
        }
    }
    let underscored: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for n in underscored {
        req.remove_header(&n);
    }
    if let Some(u) = upgrade {
        req.append_header("connection", "upgrade")?;
        req.append_header("upgrade", u.clone())?;
    }
    if let Some(v) = xff.and_then(|v| http::HeaderValue::from_bytes(&v).ok()) {
        req.append_header("x-forwarded-for", v)?;
    }
    match announce {
        Announce::Reverse { tls, host, .. } => {
            req.append_header("x-forwarded-proto", forwarded::proto(tls))?;
            if let Some(h) = host.and_then(|h| http::HeaderValue::from_str(h).ok()) {
                req.append_header("x-forwarded-host", h)?;
            }
        }
        Announce::Via { .. } => {
            req.append_header("via", VIA)?;
        }
        Announce::Nothing => {}
    }
    if let Some(t) = trace {
        // the caller's field (or fields) give way to the proxy's own span
        req.remove_header("traceparent");
        if let Ok(v) = http::HeaderValue::from_bytes(&super::trace::traceparent(t)) {
            req.insert_header("traceparent", v)?;
        }
    }
    Ok(())
}

/// One Content-Length, normalised, for a message that carried a list of one repeated value
/// or several equal fields (RFC 9110 §8.6).
fn normalise_length(map: &http::HeaderMap) -> Option<u64> {
    let mut values = map.get_all(http::header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    let n = fields::parse_len_list(first.as_bytes())?;
    for v in values {
        if fields::parse_len_list(v.as_bytes()) != Some(n) {
            return None;
        }
    }
    Some(n)
}

/// The response as it goes to the client: hop-by-hop fields and those its `Connection`
/// nominates dropped, Content-Length normalised. A 101 keeps its `Connection` and
/// `Upgrade`: they are the handshake.
///
/// A chunked body's trailer fields are not passed on, by any engine: they come after the
/// head this edit sees, so none of its rules would apply to them (a client that merges
/// trailers into the head would take fields the proxy drops from heads), and Pingora's engine
/// discards HTTP/1 trailers anyway. nginx drops them too. The lean engine, which relays
/// chunked bodies unchanged, holds them back as it goes
/// (`ChunkedScanner::without_trailers` in `http::chunked`).
pub fn response(resp: &mut ResponseHeader) {
    if resp.status.as_u16() == 101 {
        return;
    }
    if let Some(n) = normalise_length(&resp.headers) {
        let _ = resp.insert_header(http::header::CONTENT_LENGTH, n);
    }
    for n in nominated_names(&resp.headers) {
        if fields::nomination_drops(fields::classify(n.as_bytes())) {
            resp.remove_header(n.as_str());
        }
    }
    for n in fields::RESPONSE_HOP_BY_HOP {
        resp.remove_header(*n);
    }
}

/// Whether a request is a TRACE or OPTIONS whose `Max-Forwards` is spent: the proxy
/// answers it as the final recipient (RFC 9110 §7.6.2) once it is admitted.
pub fn max_forwards_spent(req: &RequestHeader) -> bool {
    let method = req.method.as_str().as_bytes();
    // the method first: every other request skips the field lookup
    fields::max_forwards_applies(method)
        && fields::max_forwards(
            method,
            req.headers
                .get_all(http::header::MAX_FORWARDS)
                .into_iter()
                .map(|v| v.as_bytes()),
        ) == fields::MaxForwards::Answer
}

/// The `Upgrade` value of a header-map request whose upgrade the proxy relays
/// ([`fields::upgrade_relayed`]).
pub fn relayed_upgrade(req: &RequestHeader) -> Option<http::HeaderValue> {
    let mut c = fields::ConnectionOptions::default();
    for v in req.headers.get_all(http::header::CONNECTION) {
        c.add(v.as_bytes());
    }
    let body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| fields::parse_len(v.as_bytes()))
            .is_some_and(|n| n > 0);
    let up = req.headers.get(http::header::UPGRADE);
    fields::upgrade_relayed(
        req.method == http::Method::GET,
        c.upgrade,
        up.map(|v| v.as_bytes()),
        body,
    )
    .then(|| up.cloned())
    .flatten()
}

/// A `Date` for a response head held as a map whose writer adds none (HTTP/3's): the
/// backend's is kept, one is added when it sent none (RFC 9110 §6.6.1), as the HTTP/1
/// writers do. Interim responses carry none.
pub fn date_if_missing(status: http::StatusCode, headers: &mut http::HeaderMap) {
    if status.is_informational() || headers.contains_key(http::header::DATE) {
        return;
    }
    let mut v = Vec::with_capacity(29);
    super::date::now(&mut v);
    if let Ok(v) = http::HeaderValue::from_bytes(&v) {
        headers.insert(http::header::DATE, v);
    }
}

/// The response as it goes to an HTTP/1.0 client, which knows no chunked coding (RFC 9112
/// §6.1): a chunked body is sent close-delimited instead. Returns whether the connection
/// may stay open after it: only when the length is known.
pub fn response_for_http10(resp: &mut ResponseHeader) -> bool {
    let chunked = resp.headers.contains_key(http::header::TRANSFER_ENCODING);
    if chunked {
        resp.remove_header(&http::header::TRANSFER_ENCODING);
        resp.remove_header(&http::header::CONTENT_LENGTH);
    }
    let no_body = matches!(resp.status.as_u16(), 204 | 304) || resp.status.is_informational();
    no_body || (!chunked && resp.headers.contains_key(http::header::CONTENT_LENGTH))
}

/// How long a client may remember the HTTP/3 endpoint (nginx's and Caddy's choice).
pub const ALT_SVC_MAX_AGE: u32 = 86400;

/// The `Alt-Svc` value of a listener with `http3: true`: the same port over UDP.
pub fn alt_svc_value(spec: &crate::config::ListenerSpec) -> Option<http::HeaderValue> {
    spec.http3.as_ref()?;
    let v = format!("h3=\":{}\"; ma={ALT_SVC_MAX_AGE}", spec.addr.port());
    http::HeaderValue::from_str(&v).ok()
}

/// The response edit of a listener that serves HTTP/3 too: every response on its TCP side
/// advertises it, whichever engine wrote it (RFC 7838).
pub fn alt_svc(l: &super::ListenerPolicy) -> Option<&http::HeaderValue> {
    l.alt_svc.as_ref()
}

/// [`alt_svc`] for the lean engine's HTTP/1 head bytes (ending in the empty line).
pub fn push_alt_svc_h1(l: &super::ListenerPolicy, head: &mut Vec<u8>) {
    if let Some(v) = alt_svc(l) {
        let at = head.len().saturating_sub(2);
        let mut line = Vec::with_capacity(v.len() + 11);
        line.extend_from_slice(b"alt-svc: ");
        line.extend_from_slice(v.as_bytes());
        line.extend_from_slice(b"\r\n");
        head.splice(at..at, line);
    }
}

/// Whether a response field survives the edit; for the lean engine's byte writer.
pub fn keep_response_field(f: Field, chunked: bool) -> bool {
    !fields::drop_on_response(f, chunked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edited(te: &str, to_h2: bool) -> Option<String> {
        let mut req = RequestHeader::build("POST", b"/svc/M", None).expect("request");
        req.insert_header("te", te).expect("te");
        let announce = Announce::Reverse {
            client: None,
            tls: false,
            host: Some("a.test"),
        };
        request(&mut req, None, announce, true, to_h2, None).expect("edit");
        req.headers
            .get("te")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    #[test]
    fn te_trailers_crosses_to_http2_upstreams_only() {
        assert_eq!(edited("trailers", true).as_deref(), Some("trailers"));
        assert_eq!(edited("gzip, Trailers", true).as_deref(), Some("trailers"));
        assert_eq!(edited("gzip", true), None);
        assert_eq!(edited("trailers", false), None);
    }
}
