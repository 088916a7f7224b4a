use super::*;
use crate::testkit::Rng;

const REQUESTS: &[&[u8]] = &[
    b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    b"POST /api/v1/items?id=7&x=%20 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nX-Empty:\r\nX-Ws: \t padded \t \r\nAccept: */*\r\n\r\nhello",
    b"HEAD * HTTP/1.0\r\n\r\n",
    b"OPTIONS http://a.test/x HTTP/1.1\r\nUser-Agent: curl/8.5.0\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
];

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 18:47:12 GMT\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n",
    b"HTTP/1.0 404 Not Found\r\nX-A:\r\n\r\n",
    b"HTTP/1.1 204\r\nX-Ws:   \r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 302 \r\nLocation: /a b\r\n\r\n",
];

#[test]
fn the_common_heads_take_the_strict_pass_and_agree_with_httparse() {
    for r in REQUESTS {
        assert!(
            agree_request(r),
            "not strict: {:?}",
            String::from_utf8_lossy(r)
        );
    }
    for r in RESPONSES {
        assert!(
            agree_response(r),
            "not strict: {:?}",
            String::from_utf8_lossy(r)
        );
    }
}

#[test]
fn heads_outside_the_strict_shape_get_httparse_answer() {
    let requests: &[&[u8]] = &[
        b"\r\nGET / HTTP/1.1\r\n\r\n",               // leading empty line (httparse skips it)
        b"GET / HTTP/1.1\nHost: a\n\n",              // bare LF
        b"GET  / HTTP/1.1\r\n\r\n",                  // two spaces
        b"GET /\xff HTTP/1.1\r\n\r\n",               // obs-text in the target
        b"GET / HTTP/2.0\r\n\r\n",                   // another version
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",       // space before the colon
        b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", // obs-fold
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",      // NUL in a value
        b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",      // DEL in a value
        b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",        // CR inside a value
        b"GET / HTTP/1.1\r\nHost: a\r\n",            // partial
        b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\nI: 9\r\n\r\n", // too many fields
        b"",
        b"G",
    ];
    for r in requests {
        assert!(
            !agree_request(r),
            "strict took {:?}",
            String::from_utf8_lossy(r)
        );
    }
    let responses: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\n\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 caf\xc3\xa9\r\n\r\n", // obs-text reason (httparse: empty reason)
        b"HTTP/1.1 200\n\r\n",
        b"HTTP/1.1 200 OK\r\nX:\x01\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\n\r",
        b"HTTP/2 200\r\n\r\n",
    ];
    for r in responses {
        assert!(
            !agree_response(r),
            "strict took {:?}",
            String::from_utf8_lossy(r)
        );
    }
}

/// Bytes a mutation puts in: the delimiters and the classes' edges.
const INTERESTING: &[u8] = b"\r\n :\t\x00\x01\x7f\x80\xff/?Hh1.\"(),;=@[]{}";

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(v.len() + 1);
        let b = if rng.below(2) == 0 {
            INTERESTING[rng.below(INTERESTING.len())]
        } else {
            rng.next() as u8
        };
        match rng.below(4) {
            0 if i < v.len() => v[i] = b,
            1 => v.insert(i, b),
            2 if i < v.len() => {
                v.remove(i);
            }
            _ => v.truncate(i),
        }
    }
    v
}

#[test]
fn agrees_with_httparse_on_every_head_it_takes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut strict, mut total) = (0, 0);
    for round in 0..40_000 {
        let req = round % 2 == 0;
        let bases = if req { REQUESTS } else { RESPONSES };
        let base = bases[rng.below(bases.len())];
        let input = mutate(&mut rng, base);
        let took = if req {
            agree_request(&input)
        } else {
            agree_response(&input)
        };
        strict += usize::from(took);
        total += 1;
    }
    // the comparison must have covered both paths many times over
    assert!(
        strict > total / 20,
        "only {strict} of {total} took the strict pass"
    );
    assert!(
        strict < total * 19 / 20,
        "{strict} of {total} took the strict pass"
    );
}

#[test]
fn the_word_at_a_time_value_scan_stops_where_the_byte_scan_does() {
    let mut rng = Rng(7);
    for _ in 0..200_000 {
        let len = rng.below(40);
        let v: Vec<u8> = (0..len)
            .map(|_| match rng.below(4) {
                0 => INTERESTING[rng.below(INTERESTING.len())],
                _ => 0x20 + rng.below(0x5f) as u8,
            })
            .collect();
        let from = rng.below(len + 1);
        assert_eq!(
            value_end(&v, from),
            run(&v, from, VALUE),
            "{v:?} from {from}"
        );
    }
}

#[test]
fn the_ascii_shortcut_answers_as_from_utf8() {
    let cases: [&[u8]; 6] = [
        b"",
        b"127.0.0.1:8080",
        b"example.com",
        "b\u{fc}cher.example".as_bytes(),
        b"bad\xff.example",
        b"\xc3",
    ];
    for v in cases {
        assert_eq!(
            utf8(v).map_err(|e| e.valid_up_to()),
            std::str::from_utf8(v).map_err(|e| e.valid_up_to()),
            "{v:?}"
        );
    }
}
