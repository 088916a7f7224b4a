//! One policy, two engines: the same requests through a listener on the lean engine and one
//! with `fast_path: false` (Pingora's general proxy for everything) must give the client the
//! same status, header fields and body, and the origin the same requests (method, target,
//! header fields with their repeats, body).
//!
//! Both listeners route to the same scripted origin (`support::scripted`), which answers by
//! path with the response shapes an edge meets (chunked, repeated Set-Cookie, hop-by-hop
//! fields, 1xx before the final answer, close-delimited, slow) and records each request as it
//! arrived. `Date` is compared by presence only, and a few fields that carry the proxy's own
//! per-listener values (the X-Forwarded-For chain's port-free client address is the same;
//! nothing else differs) need no masking. Each case runs on a fresh connection to each
//! listener.

mod backends;
mod connection;
mod forwarding;
mod matrix;

use crate::support::scripted::{field, find, normalized, Answer};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// Split what the proxy wrote on one connection into responses. Bodies are framed by
/// Content-Length, chunked (kept raw) or the end of the bytes; `heads_only`: responses to HEAD.
/// Also says whether every response to the requests sent is complete.
pub(crate) fn responses(mut bytes: &[u8], heads_only: &[bool]) -> (Vec<Answer>, bool) {
    let mut out = Vec::new();
    let mut i = 0;
    let mut complete = true;
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let fields: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some(field(k, v))
            })
            .collect();
        if (100..200).contains(&status) && status != 101 {
            out.push(Answer {
                status,
                fields: normalized(fields),
                body: Vec::new(),
            });
            continue;
        }
        let head_only = heads_only.get(i).copied().unwrap_or(false);
        i += 1;
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (length, chunked) = (get("content-length"), get("transfer-encoding").is_some());
        let mut fields = fields;
        let body: Vec<u8> = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = length.and_then(|v| v.parse::<usize>().ok()) {
            complete &= bytes.len() >= len;
            let len = len.min(bytes.len());
            let b = bytes[..len].to_vec();
            bytes = &bytes[len..];
            b
        } else if chunked {
            // chunk boundaries are not the message: compare the decoded body, and the
            // trailer fields as fields named `trailer <name>`
            let (b, used, trailers) = dechunk(bytes);
            fields.extend(
                trailers
                    .into_iter()
                    .map(|(k, v)| (format!("trailer {k}"), v)),
            );
            complete &= used.is_some();
            bytes = &bytes[used.unwrap_or(bytes.len())..];
            b
        } else {
            // ends with the connection
            complete = false;
            let b = bytes.to_vec();
            bytes = &[];
            b
        };
        out.push(Answer {
            status,
            fields: normalized(fields),
            body,
        });
    }
    (out, complete && i >= heads_only.len())
}

/// Decode a chunked body: the data, how many bytes it took (`None`: incomplete), and its
/// trailer fields.
fn dechunk(mut b: &[u8]) -> (Vec<u8>, Option<usize>, Vec<(String, String)>) {
    let total = b.len();
    let mut out = Vec::new();
    let mut trailers = Vec::new();
    loop {
        let Some(eol) = find(b, b"\r\n") else {
            return (out, None, trailers);
        };
        let size_text = String::from_utf8_lossy(&b[..eol]).into_owned();
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (out, None, trailers);
        };
        b = &b[eol + 2..];
        if size == 0 {
            // trailer lines, then the final CRLF
            loop {
                let Some(eol) = find(b, b"\r\n") else {
                    return (out, None, trailers);
                };
                if eol == 0 {
                    return (out, Some(total - b.len() + 2), trailers);
                }
                let line = String::from_utf8_lossy(&b[..eol]).into_owned();
                if let Some((k, v)) = line.split_once(':') {
                    trailers.push(field(k, v));
                }
                b = &b[eol + 2..];
            }
        }
        if b.len() < size + 2 {
            return (out, None, trailers);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

pub(crate) struct Case {
    pub(crate) name: &'static str,
    /// The raw request bytes; `{host}` is replaced by the listener's authority.
    pub(crate) raw: String,
    /// Which of the requests are HEAD, in order.
    pub(crate) heads: Vec<bool>,
    /// Listener pair to use: 0 = the main pair, 1 = the rate-limited pair.
    pub(crate) pair: usize,
    /// Requests the origin must see from each engine (the retry cases), when given.
    pub(crate) tries: Option<usize>,
}

pub(crate) fn case(name: &'static str, raw: &str) -> Case {
    // one entry per request line in the bytes
    let heads = raw
        .split("\r\n")
        .filter(|l| {
            let mut w = l.split(' ');
            let m = w.next().unwrap_or("");
            !m.is_empty()
                && m.bytes().all(|b| b.is_ascii_uppercase())
                && w.next_back().is_some_and(|v| v.starts_with("HTTP/1."))
        })
        .map(|l| l.starts_with("HEAD "))
        .collect();
    Case {
        name,
        raw: raw.to_string(),
        heads,
        pair: 0,
        tries: None,
    }
}

pub(crate) fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

/// Send a case's bytes on a new connection and read until every response is complete, the
/// proxy closes, or `WAIT` passes.
pub(crate) async fn run(addr: SocketAddr, c: &Case) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(c.raw.as_bytes()).await.expect("send");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut chunk = [0u8; 65536];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
        if responses(&out, &c.heads).1 {
            return out;
        }
    }
}
