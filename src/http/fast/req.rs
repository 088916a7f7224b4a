//! A request the lean HTTP/1 engine took, and the few bytes of its head it keeps while it
//! waits for its backend.

use crate::observability::ReqView;

/// A request the fast path took, as far as the rest of its handling needs it.
pub(super) struct Req<'a> {
    pub view: ReqView<'a>,
    pub head_only: bool,
    /// Bytes after this request's body: the next pipelined request, for the guard.
    pub pipelined: &'a [u8],
    /// Body bytes still to read from the client (of a Content-Length body).
    pub body_left: u64,
    /// The scanner of a chunked body still arriving.
    pub chunks: Option<crate::http::chunked::ChunkedScanner>,
    /// The trace context, when tracing is on ([`crate::policy::trace::begin`]).
    pub trace: Option<crate::observability::tracing::TraceCtx>,
}

impl Req<'_> {
    /// Whether the client has more of the body to send: a connection answered without
    /// reading it cannot carry another request.
    pub fn body_unread(&self) -> bool {
        self.body_left > 0 || self.chunks.is_some()
    }
}

/// What a proxied request still needs of its head's buffer once the upstream request is
/// built: the access log's fields, the retry log's method and target, the bytes of a
/// pipelined next request. Copied out (typically under 100 bytes) so that the head's
/// buffer, 4 KiB or more, is given back before the wait for the backend: a request held
/// by a slow backend, a long poll or an idle WebSocket keeps these instead.
pub(super) struct Kept {
    text: String,
    /// Method, target, host, Referer and User-Agent: a constant (a common method, the "-" of
    /// a field not shown), or where the field ends in `text`.
    parts: [Part; 5],
    pipelined: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Part {
    Fixed(&'static str),
    EndsAt(usize),
}

/// A field's value when it needs no copy: the access log's "-" and the common methods
/// (each copy is an allocation's share and a call; a GET's target and host are all most
/// requests copy).
fn fixed(v: &str) -> Option<&'static str> {
    // a match on strings compares lengths first: most fields are rejected in one step
    Some(match v {
        "-" => "-",
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => return None,
    })
}

impl Kept {
    pub fn of(r: &Req<'_>) -> Kept {
        let v = &r.view;
        let fields = [v.method, v.uri, v.host, v.referer, v.user_agent];
        let known = fields.map(fixed);
        let copied = fields.iter().zip(known).filter(|(_, k)| k.is_none());
        let mut text = String::with_capacity(copied.map(|(f, _)| f.len()).sum());
        let mut parts = [Part::EndsAt(0); 5];
        for ((f, k), p) in fields.iter().zip(known).zip(parts.iter_mut()) {
            *p = match k {
                Some(k) => Part::Fixed(k),
                None => {
                    text.push_str(f);
                    Part::EndsAt(text.len())
                }
            };
        }
        Kept {
            text,
            parts,
            // empty, and no allocation, unless the client pipelined
            pipelined: r.pipelined.to_vec(),
        }
    }

    /// `r` again, its borrowed parts now this copy's.
    pub fn req<'k>(&'k self, r: Req<'_>) -> Req<'k> {
        let mut from = 0;
        let [method, uri, host, referer, user_agent] = self.parts.map(|p| match p {
            Part::Fixed(k) => k,
            Part::EndsAt(end) => {
                let f = &self.text[from..end];
                from = end;
                f
            }
        });
        Req {
            view: ReqView {
                method,
                uri,
                host,
                referer,
                user_agent,
                ..r.view
            },
            pipelined: &self.pipelined,
            head_only: r.head_only,
            body_left: r.body_left,
            chunks: r.chunks,
            trace: r.trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_request_reads_as_the_original() {
        let head = b"GET /a?b HTTP/1.1\r\n".to_vec();
        let r = Req {
            view: ReqView {
                client: None,
                method: "GET",
                uri: "/a?b",
                version: "HTTP/1.1",
                host: "h\u{e9}.example",
                referer: "-",
                user_agent: "curl/8",
                bytes_in: 7,
            },
            head_only: false,
            pipelined: &head[..4],
            body_left: 3,
            chunks: None,
            trace: None,
        };
        let kept = Kept::of(&r);
        let k = kept.req(r);
        assert_eq!(
            (k.view.method, k.view.uri, k.view.host),
            ("GET", "/a?b", "h\u{e9}.example")
        );
        assert_eq!((k.view.referer, k.view.user_agent), ("-", "curl/8"));
        assert_eq!(
            (k.view.bytes_in, k.body_left, k.pipelined),
            (7, 3, &b"GET "[..])
        );
        drop(head);
        assert_eq!(k.view.version, "HTTP/1.1");
    }

    #[test]
    fn kept_request_copies_uncommon_methods_and_shown_fields() {
        let head = b"PROPFIND /d h a".to_vec();
        let t = std::str::from_utf8(&head).expect("ascii");
        let r = Req {
            view: ReqView {
                client: None,
                method: &t[..8],
                uri: &t[9..11],
                version: "HTTP/1.0",
                host: &t[12..13],
                referer: "-",
                user_agent: &t[14..],
                bytes_in: 0,
            },
            head_only: true,
            pipelined: &[],
            body_left: 0,
            chunks: None,
            trace: None,
        };
        let kept = Kept::of(&r);
        let k = kept.req(r);
        drop(head);
        let v = &k.view;
        assert_eq!(
            (v.method, v.uri, v.host, v.referer, v.user_agent),
            ("PROPFIND", "/d", "h", "-", "a")
        );
        assert!(k.head_only && k.pipelined.is_empty());
    }
}
