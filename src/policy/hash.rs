//! The consistent-hash key of a request, from the field the upstream's `hash_key` names.
//! Engines pass the request's parts; the L4 proxy passes only the client address.

use crate::config::HashKey;
use crate::upstream::select::hash_bytes;
use std::net::IpAddr;

/// The request parts a key may come from. `header` looks a field up by name (first
/// occurrence); `cookies` yields every Cookie field value (HTTP/2 may split them).
pub fn key<'a, H, C>(
    key: &HashKey,
    client: Option<IpAddr>,
    target: &str,
    header: H,
    cookies: C,
) -> u64
where
    H: FnOnce(&str) -> Option<&'a [u8]>,
    C: IntoIterator<Item = &'a [u8]>,
{
    match key {
        HashKey::ClientIp => client_ip(client),
        HashKey::Uri => hash_bytes(target.as_bytes()),
        HashKey::Header(name) => header(name).map(hash_bytes).unwrap_or(0),
        HashKey::Cookie(name) => cookies
            .into_iter()
            .find_map(|v| cookie(v, name))
            .map(hash_bytes)
            .unwrap_or(0),
    }
}

/// The key of a header-map request (HTTP/2, HTTP/3, Pingora's sessions) for `pool`: 0 unless
/// the pool selects by consistent hash, so no field is read otherwise.
pub fn of_request(
    pool: &crate::upstream::Pool,
    client: Option<IpAddr>,
    req: &pingora_http::RequestHeader,
) -> u64 {
    if pool.selection != crate::config::Selection::ConsistentHash {
        return 0;
    }
    key(
        &pool.hash_key,
        client,
        req.uri.path_and_query().map_or("/", |p| p.as_str()),
        |n| req.headers.get(n).map(|v| v.as_bytes()),
        req.headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
    )
}

pub fn client_ip(client: Option<IpAddr>) -> u64 {
    match client {
        Some(IpAddr::V4(v4)) => hash_bytes(&v4.octets()),
        Some(IpAddr::V6(v6)) => hash_bytes(&v6.octets()),
        None => 0,
    }
}

/// The value of cookie `name` in one Cookie field value.
pub fn cookie<'a>(value: &'a [u8], name: &str) -> Option<&'a [u8]> {
    value.split(|&b| b == b';').find_map(|part| {
        part.trim_ascii()
            .strip_prefix(name.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_named_part() {
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let none = |_: &str| None;
        let cookies: [&[u8]; 2] = [b"a=1", b"sid=xyz; b=2"];
        let k = key(&HashKey::Cookie("sid".into()), None, "/", none, cookies);
        assert_eq!(k, hash_bytes(b"xyz"));
        assert_eq!(
            key(&HashKey::ClientIp, Some(ip), "/", none, []),
            hash_bytes(&[10, 1, 2, 3])
        );
        assert_eq!(
            key(&HashKey::Uri, None, "/a?b", none, []),
            hash_bytes(b"/a?b")
        );
        let h = |n: &str| (n == "x-user").then_some(b"u1".as_slice());
        assert_eq!(
            key(&HashKey::Header("x-user".into()), None, "/", h, []),
            hash_bytes(b"u1")
        );
        assert_eq!(cookie(b"sidx=1; sid=2", "sid"), Some(b"2".as_slice()));
    }
}
