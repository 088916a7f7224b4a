//! The proxy's own answer to an ACME HTTP-01 challenge (RFC 8555 §8.3): the key
//! authorization of a pending order, on every HTTP listener, before routing (and before a
//! redirect to https, which a CA would follow but need not).

use super::answer::Answer;
use bytes::Bytes;

pub fn challenge(path: &str) -> Option<Answer> {
    crate::tls::acme::challenge::lookup(path).map(|k| Answer::text(Bytes::from(k)))
}
