//! The network layer under the engines: the accept loop and plain TCP streams of plaintext
//! listeners ([`listen`]), the one byte relay for every tunnel ([`relay`], [`splice`]), and
//! the proxy's own answers written on a Pingora session ([`respond`]).

pub mod linger;
pub mod listen;
pub mod relay;
pub mod respond;
pub mod splice;

/// The HTTP/2 connection preface (RFC 9113 §3.4), which an `h2c: true` listener looks for.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
