//! gRPC through both HTTP/2 paths, with a real client and server (Python grpcio, installed
//! by `scripts/setup --test`; tests/it/grpc/): a unary call, a non-OK status with its
//! trailers, bidirectional streaming, and a cancel that reaches the origin, through an h2c
//! listener on the lean engine and one on Pingora's path, to an `http2: true` upstream.

use crate::support::Proxy;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/grpc")
        .join(name)
}

/// python3 with grpcio, or a clear failure (never a silent skip).
fn python() -> &'static str {
    let ok = Command::new("python3")
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the gRPC test needs python3 with grpcio: run `scripts/setup --test` (pip install grpcio)"
    );
    "python3"
}

/// The origin: a grpcio server on 127.0.0.1:0; ends when dropped (its stdin closes).
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(python())
            .arg(script("server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the grpcio server");
        let out = child.stdout.take().expect("server stdout");
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("the grpcio server did not print its port: {line:?}")
            });
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn grpc_unary_status_trailers_bidi_and_cancel_through_both_http2_paths() {
    let server = Server::start();
    let cfg = format!(
        "listeners:
  - {{name: fast, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}
  - {{name: general, address: 127.0.0.1:{{{{port1}}}}, protocol: http, h2c: true, fast_path: false}}
upstreams:
  - {{name: grpc, backends: [{{address: 127.0.0.1:{}}}], http2: true, read_timeout: 30s}}
routes:
  - {{listener: fast, upstream: grpc}}
  - {{listener: general, upstream: grpc}}
",
        server.port
    );
    let proxy = Proxy::start(&cfg);
    let mut problems = Vec::new();
    for (engine, i) in [("lean", 0), ("general", 1)] {
        let out = Command::new(python())
            .arg(script("client.py"))
            .arg(format!("127.0.0.1:{}", proxy.port(i)))
            .output()
            .expect("run the grpcio client");
        if !out.status.success() {
            problems.push(format!(
                "{engine} listener: client failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let log = proxy.log();
    if log.contains("answering 400") || log.contains("ERROR") {
        problems.push("the cancelled call was answered 400 or logged as an error".into());
    }
    assert!(
        problems.is_empty(),
        "{}\n--- proxy log ---\n{}",
        problems.join("\n"),
        proxy.log()
    );
}
