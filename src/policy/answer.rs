//! The proxy's own answers: one type, the status a failure maps to, and each answer rendered
//! for HTTP/1 bytes or as header fields for engines that write a header map (Pingora's
//! session, HTTP/2 streams). The page names the status, never a backend.

use bytes::Bytes;
use std::sync::Arc;

/// An answer the proxy gives itself instead of a backend's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `Retry-After` seconds (429, and 503 when the listener is full).
    pub retry_after: Option<u32>,
    /// The connection must close after it (the request body was not read, or the failure
    /// leaves the connection in an unknown state).
    pub close: bool,
    /// A plain-text body of the proxy's own (an ACME key authorization) in place of the
    /// status page.
    pub text: Option<Bytes>,
    /// One header field of the answer's own: `Allow` in a route's 405 (RFC 9110 §15.5.6),
    /// `Proxy-Authenticate` in the forward proxy's 407.
    pub field: Option<(&'static str, Arc<str>)>,
    /// A sentence for the page: why (the forward proxy names the rule that denied a
    /// request). Never a backend's detail.
    pub detail: Option<Arc<str>>,
}

impl Answer {
    pub fn new(status: u16) -> Answer {
        Answer {
            status,
            retry_after: None,
            close: false,
            text: None,
            field: None,
            detail: None,
        }
    }

    /// A 200 with a plain-text body.
    pub fn text(body: Bytes) -> Answer {
        Answer {
            text: Some(body),
            ..Answer::new(200)
        }
    }

    /// The answer to a TRACE or OPTIONS whose `Max-Forwards` is spent: the proxy is the
    /// final recipient (RFC 9110 §7.6.2). An empty 200: a TRACE is not reflected, since the
    /// reflection would carry the request's cookies and credentials back into a page's
    /// reach (cross-site tracing), as nginx refuses TRACE outright.
    pub fn final_recipient() -> Answer {
        Answer::text(Bytes::new())
    }

    pub fn closing(status: u16) -> Answer {
        Answer {
            close: true,
            ..Answer::new(status)
        }
    }

    /// A 405 for a method the route does not take; `allow`: the ones it does, if it names
    /// them.
    pub fn method_not_allowed(allow: Option<Arc<str>>) -> Answer {
        Answer {
            field: allow.map(|a| ("allow", a)),
            ..Answer::new(405)
        }
    }

    /// The answer with a header field of its own.
    pub fn with_field(mut self, name: &'static str, value: impl Into<Arc<str>>) -> Answer {
        self.field = Some((name, value.into()));
        self
    }

    /// The answer with a sentence for its page.
    pub fn with_detail(mut self, detail: impl Into<Arc<str>>) -> Answer {
        self.detail = Some(detail.into());
        self
    }

    pub fn retry_after(mut self, secs: u32) -> Answer {
        self.retry_after = Some(secs);
        self
    }

    pub fn body(&self) -> Bytes {
        match &self.text {
            Some(t) => t.clone(),
            None => page_with(self.status, self.detail.as_deref()),
        }
    }

    /// The header fields of the answer, but for `Connection` and `Date`, which each engine's
    /// writer owns.
    pub fn fields(&self, body_len: usize) -> Vec<(&'static str, String)> {
        let mut f = Vec::with_capacity(4);
        if let Some(s) = self.retry_after {
            f.push(("retry-after", s.to_string()));
        }
        if let Some((name, value)) = &self.field {
            f.push((name, value.to_string()));
        }
        let ct = if self.text.is_some() {
            "text/plain"
        } else {
            "text/html; charset=utf-8"
        };
        f.push(("content-type", ct.to_string()));
        f.push(("content-length", body_len.to_string()));
        f.push(("cache-control", "no-store".to_string()));
        f
    }

    /// The whole answer as HTTP/1.1 bytes. `keep`: the connection stays open after it.
    pub fn h1(&self, head_only: bool, keep: bool) -> Vec<u8> {
        let body = self.body();
        let mut p = Vec::with_capacity(256 + body.len());
        p.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).as_bytes(),
        );
        for (k, v) in self.fields(body.len()) {
            p.extend_from_slice(k.as_bytes());
            p.extend_from_slice(b": ");
            p.extend_from_slice(v.as_bytes());
            p.extend_from_slice(b"\r\n");
        }
        p.extend_from_slice(b"date: ");
        super::date::now(&mut p);
        p.extend_from_slice(b"\r\n");
        p.extend_from_slice(connection_line(keep && !self.close));
        p.extend_from_slice(b"\r\n");
        if !head_only {
            p.extend_from_slice(&body);
        }
        p
    }
}

/// The `Connection` line of every HTTP/1.1 answer the proxy writes, its own or a backend's:
/// stated either way, as Pingora's writer and nginx do.
pub fn connection_line(keep: bool) -> &'static [u8] {
    if keep {
        b"connection: keep-alive\r\n"
    } else {
        b"connection: close\r\n"
    }
}

pub fn reason(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// A small page of the proxy's own.
pub fn page(code: u16) -> Bytes {
    page_with(code, None)
}

/// A small page of the proxy's own, with a sentence saying why (HTML-escaped).
pub fn page_with(code: u16, detail: Option<&str>) -> Bytes {
    let reason = reason(code);
    let detail = match detail {
        Some(d) => format!("<p>{}</p>", escape(d)),
        None => String::new(),
    };
    Bytes::from(format!(
        "<html><head><title>{code} {reason}</title></head><body><h1>{code} {reason}</h1>{detail}<hr><p>stepstone</p></body></html>\n"
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Why a backend's status cannot be passed on, making its answer a broken backend's (a
/// 502), or `None`. A status must be one HTTP defines a class for (RFC 9110 §15), and a 101
/// must answer an upgrade the proxy relayed (`upgrade_relayed`): a server must not switch to
/// a protocol the client did not ask for (§15.2.2), and an engine that passed such a 101 on
/// would turn the client's connection into a raw tunnel to the backend, past every check the
/// proxy makes on the requests that follow.
pub fn backend_status_refused(code: u16, upgrade_relayed: bool) -> Option<String> {
    if !(100..=599).contains(&code) {
        return Some(format!("backend status {code} outside 100-599"));
    }
    if code == 101 && !upgrade_relayed {
        return Some(
            "backend switched protocols (101) for a request without a relayed upgrade".into(),
        );
    }
    None
}

/// Why a request could not be answered by a backend: the engines name the failure, the
/// policy picks the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Every backend is down, ejected or already tried.
    NoBackend,
    ConnectTimeout,
    ConnectFailed,
    /// The backend took longer than `read_timeout` to answer.
    ResponseTimeout,
    /// The backend closed, reset or sent something that is not HTTP.
    BadResponse,
    /// Every usable backend is at its `max_connections` and the queue is full or the wait
    /// ran out: 503 with Retry-After.
    Overloaded,
    /// A request body over the route's limit, found while it streamed.
    BodyTooLarge,
    /// The client was too slow sending its head.
    ClientTimeout,
    /// The client sent something malformed.
    BadRequest,
    /// The client went away: there is no one to answer.
    ClientGone,
    Internal,
}

impl Failure {
    /// The proxy's own answer for it; `None` when there is no one to answer.
    pub fn answer(self) -> Option<Answer> {
        let status = self.status();
        (status > 0).then(|| match self {
            Failure::Overloaded => Answer::closing(status).retry_after(1),
            _ => Answer::closing(status),
        })
    }

    /// The status the client gets; 0 when there is no one to answer.
    pub fn status(self) -> u16 {
        match self {
            Failure::NoBackend | Failure::Overloaded => 503,
            Failure::ConnectTimeout | Failure::ResponseTimeout => 504,
            Failure::ConnectFailed | Failure::BadResponse => 502,
            Failure::BodyTooLarge => 413,
            Failure::ClientTimeout => 408,
            Failure::BadRequest => 400,
            Failure::ClientGone => 0,
            Failure::Internal => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A detail is escaped into the page and a field of the answer's own is written, by
    /// the one renderer every writer uses.
    #[test]
    fn details_are_escaped_and_own_fields_written() {
        let a = Answer::new(407)
            .with_detail("denied by <rule> & \"co\"")
            .with_field("proxy-authenticate", "Basic realm=\"x\"");
        let text = String::from_utf8(a.h1(false, true)).unwrap();
        assert!(
            text.contains("proxy-authenticate: Basic realm=\"x\"\r\n"),
            "{text}"
        );
        assert!(
            text.contains("<p>denied by &lt;rule&gt; &amp; &quot;co&quot;</p>"),
            "{text}"
        );
        let m = Answer::method_not_allowed(Some("GET, HEAD".into()));
        assert!(m.fields(0).contains(&("allow", "GET, HEAD".to_string())));
        assert!(!String::from_utf8_lossy(&Answer::new(404).body()).contains("<p>denied"));
    }

    #[test]
    fn h1_answers_carry_length_and_connection() {
        let a = Answer::new(429).retry_after(1);
        let text = String::from_utf8(a.h1(false, true)).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(text.contains("retry-after: 1\r\n"));
        assert!(text.contains("connection: keep-alive\r\n"));
        let body = a.body();
        assert!(text.ends_with(std::str::from_utf8(&body).expect("utf-8")));
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
        let head = String::from_utf8(Answer::closing(413).h1(true, true)).expect("utf-8");
        assert!(head.contains("connection: close\r\n") && head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn failures_map_to_statuses() {
        assert_eq!(Failure::NoBackend.status(), 503);
        assert_eq!(Failure::ConnectTimeout.status(), 504);
        assert_eq!(Failure::ConnectFailed.status(), 502);
        assert_eq!(Failure::ClientGone.status(), 0);
    }
}
