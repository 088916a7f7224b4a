//! A minimal HTTP/1.1 client over a real TCP socket: keep-alive, Content-Length and chunked
//! bodies, raw request bytes for the malformed cases.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names; repeated headers are joined with ", ".
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|s| s.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Send a GET with the given extra headers (Host defaults to `localhost`).
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        self.request("GET", path, headers, b"").await
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str("Host: localhost\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).await?;
        self.read_response(method == "HEAD").await
    }

    pub async fn send_raw(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw).await
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Read one response. `head_only` for HEAD requests (no body follows).
    pub async fn read_response(&mut self, head_only: bool) -> std::io::Result<Response> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("closed before a response head ({} bytes)", self.buf.len()),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers: HashMap<String, String> = HashMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                headers
                    .entry(k)
                    .and_modify(|e| {
                        e.push_str(", ");
                        e.push_str(&v)
                    })
                    .or_insert(v);
            }
        }
        let mut body = Vec::new();
        let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
        if !no_body {
            if headers
                .get("transfer-encoding")
                .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
            {
                loop {
                    let line_end = loop {
                        if let Some(p) = find(&self.buf, b"\r\n") {
                            break p;
                        }
                        if self.fill().await? == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                    };
                    let size_str = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                    let size =
                        usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                            .map_err(|_| {
                                std::io::Error::other(format!("bad chunk size {size_str:?}"))
                            })?;
                    self.buf.drain(..line_end + 2);
                    if size == 0 {
                        // trailers until an empty line
                        loop {
                            if let Some(p) = find(&self.buf, b"\r\n") {
                                let empty = p == 0;
                                self.buf.drain(..p + 2);
                                if empty {
                                    break;
                                }
                            } else if self.fill().await? == 0 {
                                break;
                            }
                        }
                        break;
                    }
                    while self.buf.len() < size + 2 {
                        if self.fill().await? == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    body.extend_from_slice(&self.buf[..size]);
                    self.buf.drain(..size + 2);
                }
            } else if let Some(len) = headers
                .get("content-length")
                .and_then(|v| v.parse::<usize>().ok())
            {
                while self.buf.len() < len {
                    if self.fill().await? == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("body cut at {} of {len} bytes", self.buf.len()),
                        ));
                    }
                }
                body.extend(self.buf.drain(..len));
            } else {
                // delimited by close
                while self.fill().await? > 0 {}
                body.append(&mut self.buf);
            }
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// True when the peer has closed the connection (read returns 0) within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match tokio::time::timeout(wait, self.stream.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// One request on a new connection.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut c = Conn::connect(addr).await?;
    c.get(path, headers).await
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `POST /api/reload` on the admin listener at `admin`, whose token is `tok`: the status and
/// the answer's text.
pub async fn admin_reload(admin: std::net::SocketAddr) -> (u16, String) {
    let r = admin_as(admin, "POST", "/api/reload", "tok").await;
    (r.status, r.text())
}

/// An admin request with the bearer `token`.
pub async fn admin_as(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> Response {
    let mut c = Conn::connect(admin).await.expect("admin");
    let auth = format!("Bearer {token}");
    c.request(method, path, &[("Authorization", &auth)], b"")
        .await
        .expect("admin answers")
}

/// A ready HTTP/2 client over a new h2c (prior knowledge) connection to `addr`, and the task
/// that drives the connection (abort it when done).
pub async fn h2c(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client.ready().await.expect("ready"), task)
}

/// The whole body of an HTTP/2 response, its flow-control window given back as data
/// arrives (else a body over the initial window would stall).
pub async fn h2_body(rx: &mut h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut body = Vec::new();
    while let Some(d) = rx.data().await {
        let d = d?;
        let _ = rx.flow_control().release_capacity(d.len());
        body.extend_from_slice(&d);
    }
    Ok(body)
}
