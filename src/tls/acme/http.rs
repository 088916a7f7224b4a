//! A small HTTPS/1.1 client for the ACME server: one request per connection
//! (`Connection: close`), OpenSSL for TLS like every other connection of the proxy, bounded
//! in time and size. ACME exchanges are few and small, so pooling would buy nothing.

use openssl::ssl::{SslConnector, SslMethod};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE: usize = 1 << 20;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// TLS trust for the ACME server: the system's, or only the CAs of `directory_ca_file`.
pub fn connector(ca_file: Option<&str>) -> Result<SslConnector, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    if let Some(path) = ca_file {
        let cas = crate::config::certs::load_ca(path)?;
        let mut store = openssl::x509::store::X509StoreBuilder::new().map_err(|e| e.to_string())?;
        for ca in cas {
            store.add_cert(ca).map_err(|e| e.to_string())?;
        }
        b.set_verify_cert_store(store.build())
            .map_err(|e| e.to_string())?;
    }
    Ok(b.build())
}

pub async fn request(
    tls: &SslConnector,
    method: &str,
    url: &str,
    body: Option<&[u8]>,
) -> Result<Response, String> {
    tokio::time::timeout(TIMEOUT, exchange(tls, method, url, body))
        .await
        .map_err(|_| format!("{method} {url}: no answer within {TIMEOUT:?}"))?
        .map_err(|e| format!("{method} {url}: {e}"))
}

async fn exchange(
    tls: &SslConnector,
    method: &str,
    url: &str,
    body: Option<&[u8]>,
) -> Result<Response, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("not an https URL".into());
    }
    let host = uri.host().ok_or("no host in the URL")?;
    let port = uri.port_u16().unwrap_or(443);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let ssl = tls
        .configure()
        .and_then(|c| c.into_ssl(host))
        .map_err(|e| e.to_string())?;
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    std::pin::Pin::new(&mut s)
        .connect()
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: stepstone/{}\r\naccept: */*\r\nconnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(b) = body {
        head.push_str(&format!(
            "content-type: application/jose+json\r\ncontent-length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    s.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // Servers often close without close_notify; what was read is complete when
            // its framing says so, checked below.
            Err(_) if !buf.is_empty() => 0,
            Err(e) => return Err(format!("read: {e}")),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(format!("response over {MAX_RESPONSE} bytes"));
        }
    }
    parse(&buf, method == "HEAD")
}

fn parse(buf: &[u8], head_only: bool) -> Result<Response, String> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut fields);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("truncated response head".into()),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = r.code.ok_or("no status")?;
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let rest = &buf[n..];
    let find = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let body = if head_only {
        Vec::new()
    } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        dechunk(rest)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len.trim().parse().map_err(|_| "bad content-length")?;
        if rest.len() < len {
            return Err("truncated response body".into());
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let line = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunked body".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_chunked_and_sized_bodies() {
        let r = super::parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nReplay-Nonce: n\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert_eq!(r.header("Replay-Nonce"), Some("n"));
        let r = super::parse(
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nokXX",
            false,
        )
        .unwrap();
        assert_eq!((r.status, &r.body[..]), (201, &b"ok"[..]));
        assert!(super::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok", false).is_err());
    }
}
