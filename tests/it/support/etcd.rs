//! A real etcd (Debian's `etcd-server`) on free loopback ports with a scratch data directory,
//! written to through its v3 JSON gateway. A missing binary fails the test, naming it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    /// The client URL's address.
    pub addr: SocketAddr,
    peer: u16,
    dir: std::path::PathBuf,
    tls: Option<Tls>,
    /// User and password once authentication is on.
    auth: Option<(String, String)>,
}

/// An etcd that serves https and wants a client certificate: the CA file, and a client
/// certificate and key it signed (for the test's own writes).
pub struct Tls {
    pub ca: std::path::PathBuf,
    pub server: (std::path::PathBuf, std::path::PathBuf),
    pub client: (std::path::PathBuf, std::path::PathBuf),
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Etcd {
    pub fn start() -> Etcd {
        Self::start_with(None)
    }

    /// With `tls`: https, and client certificates required (signed by `tls.ca`).
    pub fn start_with(tls: Option<Tls>) -> Etcd {
        let mut e = Etcd {
            child: None,
            addr: ([127, 0, 0, 1], super::free_port()).into(),
            peer: super::free_port(),
            dir: super::scratch_dir("etcd"),
            tls,
            auth: None,
        };
        e.spawn();
        e
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), for `config_source.etcd.endpoints`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Turn authentication on with a `root` user of this password.
    pub fn enable_auth(&mut self, password: &str) {
        let user = serde_json::json!({"name": "root", "password": password}).to_string();
        self.post("/v3/auth/user/add", &user, None)
            .unwrap_or_else(|e| panic!("etcd user add: {e}"));
        let _ = self.post("/v3/auth/role/add", r#"{"name":"root"}"#, None);
        self.post(
            "/v3/auth/user/grant",
            r#"{"user":"root","role":"root"}"#,
            None,
        )
        .unwrap_or_else(|e| panic!("etcd grant: {e}"));
        self.post("/v3/auth/enable", "{}", None)
            .unwrap_or_else(|e| panic!("etcd auth enable: {e}"));
        self.auth = Some(("root".into(), password.into()));
    }

    fn token(&self) -> Option<String> {
        let (u, p) = self.auth.as_ref()?;
        let body = serde_json::json!({"name": u, "password": p}).to_string();
        let v = self
            .post("/v3/auth/authenticate", &body, None)
            .unwrap_or_else(|e| panic!("etcd authenticate: {e}"));
        Some(v["token"].as_str().expect("token").to_string())
    }

    fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let mut cmd = Command::new("etcd");
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server.0)
                .arg("--key-file")
                .arg(&t.server.1)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run etcd ({e}): install Debian's etcd-server (scripts/setup --test)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // answering: a range, or with authentication on, a login
        let probe = format!("{{\"key\":\"{}\"}}", b64("/"));
        let login = self
            .auth
            .as_ref()
            .map(|(u, p)| serde_json::json!({"name": u, "password": p}).to_string());
        while match &login {
            None => self.post("/v3/kv/range", &probe, None).is_err(),
            Some(l) => self.post("/v3/auth/authenticate", l, None).is_err(),
        } {
            assert!(
                Instant::now() < deadline,
                "etcd did not answer on {}:\n{}",
                self.addr,
                std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn post(
        &self,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> Result<serde_json::Value, String> {
        let c = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let mut out = Vec::new();
        match &self.tls {
            None => {
                let mut c = c;
                c.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
                c.read_to_end(&mut out).map_err(|e| e.to_string())?;
            }
            Some(t) => {
                use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
                let mut b =
                    SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
                b.set_ca_file(&t.ca).map_err(|e| e.to_string())?;
                b.set_certificate_chain_file(&t.client.0)
                    .map_err(|e| e.to_string())?;
                b.set_private_key_file(&t.client.1, SslFiletype::PEM)
                    .map_err(|e| e.to_string())?;
                let mut c = b
                    .build()
                    .connect("127.0.0.1", c)
                    .map_err(|e| e.to_string())?;
                c.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
                // etcd may end TLS without close_notify: what was read counts
                let _ = c.read_to_end(&mut out);
            }
        }
        let text = String::from_utf8_lossy(&out);
        if !text.starts_with("HTTP/1.1 200") {
            return Err(text.into_owned());
        }
        let (a, b) = (text.find('{'), text.rfind('}'));
        match (a, b) {
            (Some(a), Some(b)) => serde_json::from_str(&text[a..=b]).map_err(|e| e.to_string()),
            _ => Err(text.into_owned()),
        }
    }

    /// Write `value` at `key`; the store's revision after it.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let body = format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(key), b64(value));
        let v = self
            .post("/v3/kv/put", &body, self.token().as_deref())
            .unwrap_or_else(|e| panic!("etcd put {key}: {e}"));
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("etcd put {key}: no revision in {v}"))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
