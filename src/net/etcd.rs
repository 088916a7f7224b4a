//! A small client of etcd's v3 JSON gateway over HTTP/1.1 (`POST /v3/kv/range` and the
//! streaming `POST /v3/watch`, keys and values in base64): what the fleet configuration
//! needs, without gRPC and its build. `https://` endpoints over OpenSSL (a CA file, a client
//! certificate), and etcd's user/password authentication (a token asked for once and again
//! when etcd no longer takes it).

use crate::config::source::{EtcdEndpoint, EtcdSpec};
use base64::Engine as _;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
use serde_json::Value;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Longest a response head may be.
const MAX_HEAD: usize = 16 << 10;
/// Largest message (a range answer or one watch event): the routing document inside.
const MAX_MESSAGE: usize = 64 << 20;

/// A value of the key and the revision that last changed it.
#[derive(Debug, Clone)]
pub struct Kv {
    pub value: String,
    pub mod_revision: i64,
}

/// What one watch message says.
#[derive(Debug)]
pub enum WatchEvent {
    /// The watch is in place; the store's revision.
    Created,
    /// The key was written.
    Put(Kv),
    Deleted(i64),
    /// The store dropped the watch (the revision asked for was compacted, for one).
    Canceled(String),
    /// Nothing for this key (a progress notice).
    Other,
}

fn rev(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv(v: &Value) -> Result<Kv, String> {
    let value = v.get("value").and_then(Value::as_str).unwrap_or("");
    let bytes = B64
        .decode(value)
        .map_err(|e| format!("a value not in base64: {e}"))?;
    Ok(Kv {
        value: String::from_utf8(bytes).map_err(|_| "a value not in UTF-8".to_string())?,
        mod_revision: rev(&v["mod_revision"]),
    })
}

/// How etcd is reached: TLS settings and the authentication token.
pub struct Client {
    tls: Option<SslConnector>,
    auth: Option<(String, String)>,
    token: Mutex<Option<String>>,
}

impl Client {
    pub fn new(spec: &EtcdSpec) -> Result<Client, String> {
        let tls = if spec.endpoints.iter().any(|e| e.tls) {
            let mut b =
                SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
            if let Some(ca) = &spec.ca_file {
                b.set_ca_file(ca)
                    .map_err(|e| format!("config_source.etcd.ca_file {ca}: {e}"))?;
            }
            if let Some((cert, key)) = &spec.client_cert {
                b.set_certificate_chain_file(cert)
                    .map_err(|e| format!("config_source.etcd.cert_file {cert}: {e}"))?;
                b.set_private_key_file(key, SslFiletype::PEM)
                    .map_err(|e| format!("config_source.etcd.key_file {key}: {e}"))?;
            }
            Some(b.build())
        } else {
            None
        };
        Ok(Client {
            tls,
            auth: spec
                .auth
                .as_ref()
                .map(|a| (a.username.clone(), a.password.clone())),
            token: Mutex::new(None),
        })
    }

    async fn connect(&self, ep: &EtcdEndpoint) -> Result<Box<dyn Io>, String> {
        let s = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("cannot connect to {ep}: {e}"))?;
        let _ = s.set_nodelay(true);
        let Some(tls) = self.tls.as_ref().filter(|_| ep.tls) else {
            return Ok(Box::new(s));
        };
        let ssl = tls
            .configure()
            .and_then(|c| c.into_ssl(&ep.host))
            .map_err(|e| format!("{ep}: {e}"))?;
        let mut s = tokio_openssl::SslStream::new(ssl, s).map_err(|e| format!("{ep}: {e}"))?;
        std::pin::Pin::new(&mut s)
            .connect()
            .await
            .map_err(|e| format!("{ep}: TLS handshake: {e}"))?;
        Ok(Box::new(s))
    }

    async fn send(
        &self,
        ep: &EtcdEndpoint,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<Response, String> {
        let mut s = self.connect(ep).await?;
        let body = body.to_string();
        let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            ep.host,
            ep.port,
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("{ep}: {e}"))?;
        let mut r = Response {
            s,
            raw: Vec::with_capacity(4096),
            body: Vec::new(),
            chunked: false,
            left: None,
            done: false,
        };
        r.read_head(ep, path).await?;
        Ok(r)
    }

    /// A request with the authentication token, when etcd wants one.
    async fn post(&self, ep: &EtcdEndpoint, path: &str, body: &Value) -> Result<Response, String> {
        let Some((user, password)) = &self.auth else {
            return self.send(ep, path, body, None).await;
        };
        let cached = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let token = match cached {
            Some(t) => t,
            None => {
                let req = serde_json::json!({"name": user, "password": password});
                let v = self
                    .send(ep, "/v3/auth/authenticate", &req, None)
                    .await?
                    .message()
                    .await?;
                let t = v
                    .get("token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{ep}: authentication as {user} refused: {v}"))?
                    .to_string();
                *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
                t
            }
        };
        let res = self.send(ep, path, body, Some(&token)).await;
        if res.is_err() {
            // a token etcd no longer takes (expired, or issued by a member that restarted)
            // is asked for again on the next try
            *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        res
    }

    /// Log in again before the next request (after a failure that may have been the
    /// token's: an expired one ends a watch with an error).
    pub fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The key's value and the store's revision (`None`: the key does not exist).
    pub async fn range(
        &self,
        ep: &EtcdEndpoint,
        key: &str,
        timeout: Duration,
    ) -> Result<(Option<Kv>, i64), String> {
        let work = async {
            let req = serde_json::json!({"key": B64.encode(key)});
            let v = self.post(ep, "/v3/kv/range", &req).await?.message().await?;
            if let Some(err) = v.get("error") {
                *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return Err(format!("{ep}: {err}"));
            }
            let store_rev = rev(&v["header"]["revision"]);
            let kv = match v
                .get("kvs")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
            {
                Some(k) => Some(kv(k)?),
                None => None,
            };
            Ok((kv, store_rev))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("{ep}: no answer within {timeout:?}"))?
    }

    /// Watch `key` from `start_revision` on.
    pub async fn watch(
        &self,
        ep: &EtcdEndpoint,
        key: &str,
        start_revision: i64,
    ) -> Result<Watch, String> {
        let req = serde_json::json!({"create_request": {
            "key": B64.encode(key),
            "start_revision": start_revision.to_string(),
        }});
        Ok(Watch {
            r: self.post(ep, "/v3/watch", &req).await?,
        })
    }
}

/// A watch of one key.
pub struct Watch {
    r: Response,
}

impl Watch {
    /// The next events (one message may carry several), in order.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, String> {
        let v = self.r.message().await?;
        let Some(res) = v.get("result") else {
            let why = v
                .get("error")
                .map_or_else(|| v.to_string(), |e| e.to_string());
            return Err(format!("the watch failed: {why}"));
        };
        if res.get("canceled").and_then(Value::as_bool) == Some(true) {
            let why = res
                .get("cancel_reason")
                .and_then(Value::as_str)
                .unwrap_or("canceled");
            return Ok(vec![WatchEvent::Canceled(format!(
                "{why} (compacted to {})",
                rev(&res["compact_revision"])
            ))]);
        }
        if res.get("created").and_then(Value::as_bool) == Some(true) {
            return Ok(vec![WatchEvent::Created]);
        }
        let mut out = Vec::new();
        for ev in res
            .get("events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if ev.get("type").and_then(Value::as_str) == Some("DELETE") {
                out.push(WatchEvent::Deleted(rev(&ev["kv"]["mod_revision"])));
            } else {
                out.push(WatchEvent::Put(kv(&ev["kv"])?));
            }
        }
        if out.is_empty() {
            out.push(WatchEvent::Other);
        }
        Ok(out)
    }
}

/// An HTTP/1.1 response whose body is newline-separated JSON messages, read as they come.
struct Response {
    s: Box<dyn Io>,
    /// Bytes read and not yet decoded.
    raw: Vec<u8>,
    /// Decoded body bytes not yet taken as messages.
    body: Vec<u8>,
    chunked: bool,
    /// Body bytes left: of the current chunk, or of a Content-Length body.
    left: Option<usize>,
    done: bool,
}

impl Response {
    async fn fill(&mut self) -> Result<bool, String> {
        if self.raw.len() > MAX_MESSAGE {
            return Err("an answer too large".into());
        }
        let n = self
            .s
            .read_buf(&mut self.raw)
            .await
            .map_err(|e| e.to_string())?;
        Ok(n > 0)
    }

    async fn read_head(&mut self, ep: &EtcdEndpoint, path: &str) -> Result<(), String> {
        let end = loop {
            if let Some(i) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.raw.len() > MAX_HEAD || !self.fill().await? {
                return Err(format!("{ep}: no HTTP answer to {path}"));
            }
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
        self.raw.drain(..end + 4);
        let status = head.split(' ').nth(1).unwrap_or("");
        if status != "200" {
            // the gateway's error body says why (a chunk of JSON with a "message")
            let rest = String::from_utf8_lossy(&self.raw);
            let why = rest
                .split_once("\"message\":\"")
                .and_then(|(_, m)| m.split_once('"'))
                .map_or("", |(m, _)| m);
            return Err(format!("{ep}: {path} answered {status}: {why}"));
        }
        for line in head.lines().skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            match name.trim() {
                "transfer-encoding" => self.chunked = value.trim() == "chunked",
                "content-length" => self.left = value.trim().parse().ok(),
                _ => {}
            }
        }
        if self.chunked {
            self.left = None;
        }
        Ok(())
    }

    /// Move what can be decoded from `raw` to `body`.
    fn decode(&mut self) -> Result<(), String> {
        loop {
            if !self.chunked {
                let take = self.left.map_or(self.raw.len(), |l| l.min(self.raw.len()));
                self.body.extend(self.raw.drain(..take));
                if let Some(l) = &mut self.left {
                    *l -= take;
                    self.done |= *l == 0;
                }
                return Ok(());
            }
            match self.left {
                Some(0) => {
                    // the CRLF after a chunk's data
                    if self.raw.len() < 2 {
                        return Ok(());
                    }
                    self.raw.drain(..2);
                    self.left = None;
                }
                Some(n) => {
                    let take = n.min(self.raw.len());
                    if take == 0 {
                        return Ok(());
                    }
                    self.body.extend(self.raw.drain(..take));
                    self.left = Some(n - take);
                }
                None => {
                    let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                        return Ok(());
                    };
                    let line = String::from_utf8_lossy(&self.raw[..i]).into_owned();
                    let size = line.split(';').next().unwrap_or("").trim();
                    let n = usize::from_str_radix(size, 16)
                        .map_err(|_| format!("a bad chunk size {line:?}"))?;
                    self.raw.drain(..i + 2);
                    if n == 0 {
                        self.done = true;
                        return Ok(());
                    }
                    self.left = Some(n);
                }
            }
        }
    }

    /// The next JSON message of the body.
    async fn message(&mut self) -> Result<Value, String> {
        loop {
            self.decode()?;
            let text = String::from_utf8_lossy(&self.body);
            let line_end = self.body.iter().position(|&b| b == b'\n');
            let whole = match line_end {
                Some(i) => Some(i),
                None if self.done && !text.trim().is_empty() => Some(self.body.len()),
                None => None,
            };
            if let Some(i) = whole {
                let line: Vec<u8> = self.body.drain(..i.min(self.body.len())).collect();
                if !self.body.is_empty() {
                    self.body.remove(0);
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map_err(|e| format!("an answer not in JSON: {e}"));
            }
            if self.done {
                return Err("the answer ended".into());
            }
            if self.body.len() > MAX_MESSAGE {
                return Err("a message too large".into());
            }
            if !self.fill().await? {
                return Err("the connection closed".into());
            }
        }
    }
}
