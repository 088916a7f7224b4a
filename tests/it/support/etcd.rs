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
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut e = Etcd {
            child: None,
            addr: ([127, 0, 0, 1], super::free_port()).into(),
            peer: super::free_port(),
            dir: super::scratch_dir("etcd"),
        };
        e.spawn();
        e
    }

    /// `http://127.0.0.1:PORT`, for `config_source.etcd.endpoints`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
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
        while self
            .post("/v3/kv/range", &format!("{{\"key\":\"{}\"}}", b64("/")))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "etcd did not answer on {}:\n{}",
                self.addr,
                std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn post(&self, path: &str, body: &str) -> Result<serde_json::Value, String> {
        let mut c = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        c.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        c.read_to_end(&mut out).map_err(|e| e.to_string())?;
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
            .post("/v3/kv/put", &body)
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
