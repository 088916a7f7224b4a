//! Which engine serves a request: the lean engine (a request head parsed in place, a plain
//! HTTP/1 exchange with the backend) or Pingora's general proxy. Decided here only, before
//! either has done anything the other would have to undo, and counted by reason in
//! `stepstone_fast_path_fallbacks_total`.

use super::fields::ConnectionOptions;
use super::route::Route;
use super::ListenerPolicy;

/// Why a request goes to the general engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// `fast_path: false` on the listener.
    Disabled,
    ForwardProxy,
    RedirectHttps,
    /// A head the lean parser does not take (too many fields, not HTTP/1.1 syntax it reads).
    Unparsed,
    Http10,
    Connect,
    AbsoluteForm,
    /// A chunked body that a retry after sending or a mirror would need whole (the lean
    /// engine holds only bodies of a known length).
    TransferEncoding,
    Expect,
    /// An upgrade other than a plain WebSocket handshake.
    Upgrade,
    /// A `Connection` field nominating other fields.
    ConnectionOption,
    /// A cached route, for anything but a fresh hit.
    Cache,
    /// Backends spoken to over TLS, HTTP/2 or with a PROXY header.
    UpstreamProtocol,
    /// An HTTP/2 request the lean engine does not take: a body of unknown length or over
    /// [`H2_HELD_BODY`], an `Expect`, an upgrade, or a TRACE/OPTIONS with `Max-Forwards`.
    H2Request,
    /// A route that compresses responses (Pingora's body filters run the encoder).
    Compression,
    /// A TRACE or OPTIONS with `Max-Forwards`: its count is rewritten, or spent and answered
    /// ([`super::fields::max_forwards`]), by the general engine.
    MaxForwards,
}

impl Fallback {
    pub const ALL: [Fallback; 16] = [
        Fallback::Disabled,
        Fallback::ForwardProxy,
        Fallback::RedirectHttps,
        Fallback::Unparsed,
        Fallback::Http10,
        Fallback::Connect,
        Fallback::AbsoluteForm,
        Fallback::TransferEncoding,
        Fallback::Expect,
        Fallback::Upgrade,
        Fallback::ConnectionOption,
        Fallback::Cache,
        Fallback::UpstreamProtocol,
        Fallback::H2Request,
        Fallback::Compression,
        Fallback::MaxForwards,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Fallback::Disabled => "disabled",
            Fallback::ForwardProxy => "forward_proxy",
            Fallback::RedirectHttps => "redirect_https",
            Fallback::Unparsed => "unparsed",
            Fallback::Http10 => "http10",
            Fallback::Connect => "connect",
            Fallback::AbsoluteForm => "absolute_form",
            Fallback::TransferEncoding => "transfer_encoding",
            Fallback::Expect => "expect",
            Fallback::Upgrade => "upgrade",
            Fallback::ConnectionOption => "connection_option",
            Fallback::Cache => "cache",
            Fallback::UpstreamProtocol => "upstream_protocol",
            Fallback::H2Request => "h2_request",
            Fallback::Compression => "compression",
            Fallback::MaxForwards => "max_forwards",
        }
    }
}

/// What the lean engine's parser found in a request head.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadTraits {
    /// The head parsed completely and every field fit.
    pub parsed: bool,
    pub h2: bool,
    /// A Host field (HTTP/1.0 requests may come without one).
    pub host: bool,
    pub http10: bool,
    pub connect: bool,
    pub origin_form: bool,
    /// A chunked body follows (the request guard lets no other transfer coding through).
    pub transfer_encoding: bool,
    /// An idempotent method ([`super::retry::idempotent`]).
    pub idempotent: bool,
    pub expect: bool,
    /// An `Upgrade` field: `Some(true)` when the protocols it names are relayed
    /// ([`super::fields::upgrade_relayable`]).
    pub upgrade: Option<bool>,
    pub connection: ConnectionOptions,
    /// GET or HEAD.
    pub get_or_head: bool,
    pub get: bool,
    /// A body follows (a non-zero Content-Length, or an HTTP/2 stream not ended).
    pub body: bool,
    /// The body's declared length (Content-Length), when there is one.
    pub length: Option<u64>,
    /// A TRACE or OPTIONS with a `Max-Forwards` field.
    pub max_forwards: bool,
}

impl HeadTraits {
    /// An upgrade the proxy relays ([`super::fields::upgrade_relayed`]).
    pub fn upgrade_relayed(&self) -> bool {
        self.upgrade == Some(true) && self.connection.upgrade && self.get && !self.body
    }
}

/// The largest HTTP/2 request body the lean engine takes, and only with its length declared:
/// it reads the whole body before the request goes out (nginx's `proxy_request_buffering`,
/// on by default), so that the request leaves in one write and a retry can send it again, as
/// for a bodiless one. A larger body, or one of unknown length (a gRPC stream), streams
/// through the general engine. 64 KiB: what the general engine keeps of a body for a retry.
pub const H2_HELD_BODY: u64 = 64 << 10;

/// The decision, for a request the lean engine has parsed: its listener, its shape, and its
/// route (`None`: no route, answered 404 by either engine alike). `fresh_hit`: for a cached
/// route, whether a fresh, complete entry answers it (looked up without side effects).
pub fn choose(
    l: &ListenerPolicy,
    h: &HeadTraits,
    route: Option<&Route>,
    fresh_hit: bool,
) -> Result<(), Fallback> {
    head(l, h)?;
    match route {
        Some(r) => route_allows(h, r, fresh_hit),
        None => Ok(()),
    }
}

/// May the listener's lean engine serve anything at all? Part of [`choose`]; also asked
/// before a request is read, so a listener that never uses the lean engine costs no parse.
pub fn listener(l: &ListenerPolicy) -> Result<(), Fallback> {
    if !l.fast_path {
        return Err(Fallback::Disabled);
    }
    if l.forward {
        return Err(Fallback::ForwardProxy);
    }
    if l.redirect_https.is_some() {
        return Err(Fallback::RedirectHttps);
    }
    Ok(())
}

/// The request-shape part of [`choose`], taken from the head alone.
fn head(l: &ListenerPolicy, h: &HeadTraits) -> Result<(), Fallback> {
    listener(l)?;
    if !h.parsed {
        return Err(Fallback::Unparsed);
    }
    if h.connect {
        return Err(Fallback::Connect);
    }
    if !h.origin_form {
        return Err(Fallback::AbsoluteForm);
    }
    if h.h2 {
        let held = !h.body || h.length.is_some_and(|n| n <= H2_HELD_BODY);
        return if held && !h.expect && !h.max_forwards && h.upgrade.is_none() {
            Ok(())
        } else {
            Err(Fallback::H2Request)
        };
    }
    // HTTP/1.0: served alike (its keep-alive asked for, a chunked response sent
    // close-delimited), but for what the backend would need a Host or HTTP/1.1 framing for
    if h.http10 && (!h.host || h.transfer_encoding || h.upgrade.is_some() || h.connection.upgrade) {
        return Err(Fallback::Http10);
    }
    if h.expect {
        return Err(Fallback::Expect);
    }
    if h.connection.nominates {
        return Err(Fallback::ConnectionOption);
    }
    if h.max_forwards {
        return Err(Fallback::MaxForwards);
    }
    if (h.upgrade.is_some() || h.connection.upgrade) && !h.upgrade_relayed() {
        return Err(Fallback::Upgrade);
    }
    Ok(())
}

/// The route part of [`choose`]: the route's compression, cache and backends.
fn route_allows(h: &HeadTraits, route: &Route, fresh_hit: bool) -> Result<(), Fallback> {
    if route.compression.is_some() {
        return Err(Fallback::Compression);
    }
    if route.cache.is_some() {
        return if fresh_hit && !h.upgrade_relayed() && !h.http10 {
            Ok(())
        } else {
            Err(Fallback::Cache)
        };
    }
    if !route.plain_backends() {
        return Err(Fallback::UpstreamProtocol);
    }
    // A chunked body is relayed as it arrives. One that a retry might send again, or that
    // a mirror copies, is left to the general engine, which keeps a copy of it (the lean
    // engine holds only bodies of a known length).
    if h.transfer_encoding
        && (route.mirror.is_some() || super::retry::may_resend(&route.pool, h.idempotent))
    {
        return Err(Fallback::TransferEncoding);
    }
    Ok(())
}

/// The engine for an HTTP/3 request on `route` (one [`h3_unsupported`] let through): the
/// lean engine, except on a listener with `fast_path: false` and on a cached route for
/// anything but a fresh hit, which the general engine serves (Pingora's cache phases fill
/// the store, collapse concurrent misses, revalidate). HTTP/3 streams are not parsed by the
/// lean engine's HTTP/1 parser, so the head part of [`choose`] does not apply.
pub fn h3(l: &ListenerPolicy, route: Option<&Route>, fresh_hit: bool) -> Result<(), Fallback> {
    if !l.fast_path {
        return Err(Fallback::Disabled);
    }
    match route {
        Some(r) if r.cache.is_some() && !fresh_hit => Err(Fallback::Cache),
        _ => Ok(()),
    }
}

/// A request an HTTP/3 stream cannot carry through this proxy: CONNECT, plain or extended
/// (RFC 9220 WebSockets), has no tunnel over QUIC here; answered 501 before routing.
pub fn h3_unsupported(method: &str) -> Option<u16> {
    (method == "CONNECT").then_some(501)
}
