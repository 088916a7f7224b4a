//! One policy across protocols: the same generated request (`differential_h2::generated`)
//! sent over HTTP/1.1, HTTP/2 (h2c) and HTTP/3 must reach the origin the same: method,
//! target, header fields (with their repeats) and body. What a protocol changes by its nature
//! is compared by meaning: the framing fields (Content-Length against chunked) by the body
//! they frame, Cookie by its crumbs (HTTP/2 and HTTP/3 may split it), and X-Forwarded-Proto,
//! which names the listener's scheme (plain for HTTP/1.1 and h2c, https for HTTP/3).

use crate::differential_gen::Gen;
use crate::differential_h2::{self as h2d, generated, Req};
use crate::differential_h3::{self as h3d, both_engines};
use crate::support::scripted::{self, Origin, Seen};
use crate::support::Proxy;

/// The request as HTTP/1.1 bytes: Host from the authority, the body with its length (the
/// generator's own Content-Length field when it has one).
fn h1(r: &Req) -> String {
    let mut s = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        r.method, r.path, r.authority
    );
    for (k, v) in &r.fields {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    let body: Vec<u8> = r.data.concat();
    let has_length = r.fields.iter().any(|(k, _)| *k == "content-length");
    if !body.is_empty() && !has_length {
        s.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    s.push_str("\r\n");
    s.push_str(&String::from_utf8_lossy(&body));
    s
}

/// A request as the origin saw it, by meaning: framing fields and X-Forwarded-Proto left
/// out, Cookie fields joined into one.
fn meaning(seen: Vec<Seen>) -> Vec<Seen> {
    seen.into_iter()
        .map(|mut s| {
            // the crumbs, however the fields split them (an empty one is no crumb)
            let cookies: Vec<String> = s
                .fields
                .iter()
                .filter(|(k, _)| k == "cookie")
                .flat_map(|(_, v)| v.split(';').map(|c| c.trim().to_string()))
                .filter(|c| !c.is_empty())
                .collect();
            s.fields.retain(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "content-length" | "transfer-encoding" | "x-forwarded-proto" | "cookie"
                )
            });
            if !cookies.is_empty() {
                s.fields.push(("cookie".into(), cookies.join("; ")));
            }
            s
        })
        .collect()
}

/// Generated requests over HTTP/1.1, HTTP/2 and HTTP/3, each to the lean engine's listener,
/// must reach the origin alike and get the same status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_reach_the_origin_alike_over_every_protocol() {
    let origin = Origin::start().await;
    let plain = Proxy::start(&scripted::config(origin.addr, "protocol: http, h2c: true"));
    let (pki, tls) = both_engines("diff-protocols", &origin);
    let e = crate::support::quic::endpoint(&pki);
    let mut g = Gen(0x0070_726f_746f_636f);
    let mut diffs = Vec::new();
    let mut reached = 0;
    let mut cases = 0;
    const CASES: usize = 300;
    while cases < CASES {
        let r = generated(&mut g);
        // HTTP/1.1 carries the authority in Host: a second one is another request
        if r.fields.iter().any(|(k, _)| *k == "host") {
            continue;
        }
        cases += 1;
        let c1 = crate::differential::case("generated", &h1(&r));
        let got = crate::differential::run(plain.addr, &c1).await;
        let over_h1 = meaning(origin.take());
        let answers = crate::differential::responses(&got, &c1.heads).0;
        let status_h1 = answers.iter().rfind(|a| a.status >= 200).map(|a| a.status);
        let got = h2d::run(plain.addr, &h2d::case("generated", r.clone())).await;
        let over_h2 = meaning(origin.take());
        let status_h2 = got
            .first()
            .and_then(|s| s.answer.as_ref())
            .map(|a| a.status);
        let got = h3d::exchange(&e, tls.addr, &r).await;
        let over_h3 = meaning(origin.take());
        let status_h3 = match got {
            h3d::Got::Answer(a) => Some(a.status),
            h3d::Got::Failed(_) => None,
        };
        reached += usize::from(!over_h1.is_empty());
        let name = format!("case {cases} {}", r.label());
        scripted::differ_seen(&mut diffs, &format!("{name} (HTTP/2)"), &over_h1, &over_h2);
        scripted::differ_seen(&mut diffs, &format!("{name} (HTTP/3)"), &over_h1, &over_h3);
        let status = [status_h1, status_h2, status_h3];
        if status.iter().any(|s| *s != status_h1) {
            diffs.push(format!("{name}: statuses over HTTP/1.1, 2, 3: {status:?}"));
        }
    }
    assert!(
        reached > CASES / 2,
        "only {reached} of {CASES} generated requests reached the origin"
    );
    let logs = format!("{}\n--- HTTP/3 proxy ---\n{}", plain.log(), tls.log());
    scripted::assert_alike(&diffs, CASES, &logs);
}
