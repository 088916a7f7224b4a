//! Large bodies through three listeners on one route: the lean engine copying, the lean
//! engine with `splice: true` (bodies of 16 KiB and more go socket to pipe to socket), and
//! the general engine. Generated requests with bodies around and well past the splice
//! threshold, by length or in chunks, some followed by a pipelined request, must give the
//! client and the origin the same bytes from all three. Body bytes depend on their position,
//! so a piece lost, repeated or moved shows.

use crate::differential::{case, responses, run, Case};
use crate::differential_gen::Gen;
use crate::support::scripted::{self, Origin};
use crate::support::Proxy;

/// `n` body bytes whose value tells their position.
fn body(n: usize, salt: usize) -> String {
    const CYCLE: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ!";
    (0..n)
        .map(|i| CYCLE[(i / 7 + i + salt) % CYCLE.len()] as char)
        .collect()
}

/// One request with a generated body (or none), and whether it is a HEAD.
fn generated(g: &mut Gen, salt: usize) -> (String, bool) {
    let method = g.pick(&["POST", "POST", "PUT", "GET", "HEAD"]);
    let path = g.pick(&["/echo", "/echo", "/big", "/", "/chunked"]);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: app.test\r\n");
    if !matches!(method, "POST" | "PUT") {
        return (format!("{head}\r\n"), method == "HEAD");
    }
    let sizes = [
        0usize, 1, 16383, 16384, 16385, 65535, 65536, 100_000, 262_144,
    ];
    let n = if g.chance(4) {
        sizes[(g.next() % sizes.len() as u64) as usize]
    } else {
        (g.next() % 400_000) as usize
    };
    let b = body(n, salt);
    if g.chance(6) {
        head.push_str(&format!("Content-Length: {n}\r\n\r\n{b}"));
    } else {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut at = 0;
        while at < n {
            let k = (1 + g.next() % 70_000) as usize;
            let k = k.min(n - at);
            head.push_str(&format!("{k:x}\r\n{}\r\n", &b[at..at + k]));
            at += k;
        }
        head.push_str("0\r\n\r\n");
    }
    (head, false)
}

/// Generated large-body requests give the same bytes through the copying lean engine, the
/// splicing one and the general one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_relayed_alike_copied_spliced_and_by_the_general_engine() {
    let origin = Origin::start().await;
    let o = origin.addr;
    let mut routes = String::new();
    for l in ["copy", "splice", "general"] {
        routes.push_str(&format!(
            "  - {{listener: {l}, host: app.test, upstream: app, max_body_size: 1MiB}}\n"
        ));
    }
    let cfg = format!(
        "admin: {{address: 127.0.0.1:{{{{port3}}}}}}
listeners:
  - {{name: copy, address: 127.0.0.1:{{{{port}}}}, protocol: http}}
  - {{name: splice, address: 127.0.0.1:{{{{port1}}}}, protocol: http, splice: true}}
  - {{name: general, address: 127.0.0.1:{{{{port2}}}}, protocol: http, fast_path: false}}
upstreams:
  - {{name: app, backends: [{{address: '{o}'}}], retries: 0}}
routes:
{routes}"
    );
    let p = Proxy::start(&cfg);
    let mut g = Gen(0x0b0d_1e55_0000_0001);
    let mut diffs = Vec::new();
    const CASES: usize = 120;
    let mut bytes = 0usize;
    for i in 0..CASES {
        let (mut raw, head) = generated(&mut g, i);
        let mut heads = vec![head];
        if g.chance(2) {
            let (next, head) = generated(&mut g, i + 1);
            raw.push_str(&next);
            heads.push(head);
        }
        bytes += raw.len();
        let c = Case {
            heads,
            ..case("generated body", &raw)
        };
        let mut seen = Vec::new();
        for l in 0..3 {
            let got = run(p.addr_of(l), &c).await;
            seen.push((responses(&got, &c.heads).0, origin.take()));
        }
        let name = format!(
            "case {i} ({} bytes, starting {:?})",
            raw.len(),
            &raw[..raw.len().min(120)]
        );
        for (l, label) in [(1, "splice"), (2, "general")] {
            let what = format!("client saw ({label} against copy)");
            scripted::differ(&mut diffs, &name, &what, &seen[0].0, &seen[l].0);
            scripted::differ_seen(
                &mut diffs,
                &format!("{name} {label}"),
                &seen[0].1,
                &seen[l].1,
            );
        }
    }
    assert!(bytes > CASES * 50_000, "the cases carried {bytes} bytes");
    let text = crate::support::client::get(p.addr_of(3), "/metrics", &[])
        .await
        .expect("admin answers")
        .text();
    let spliced = crate::support::quic::metric(&text, "stepstone_spliced_bytes_total ");
    assert!(spliced > 1e6, "only {spliced} bytes were spliced");
    scripted::assert_alike(&diffs, CASES, &p.log());
}
