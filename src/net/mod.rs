//! The network layer under the engines: the accept loop of every TCP listener ([`listen`],
//! one socket per thread by [`shard`], the TLS handshake by [`tls`] over [`tls_io`]) and the plaintext TCP
//! streams, registered with the reactor only when they wait ([`plain`]), the one byte relay
//! for every tunnel ([`relay`], [`splice`]), the
//! proxy's own answers written on a Pingora session ([`respond`]), the sender of mirrored
//! requests ([`mirror`]), the shared count of the per-IP rate limit ([`ratestore`]), and the
//! etcd client the fleet configuration is watched with ([`etcd`]), and the time limit on
//! I/O that arms a timer only when the I/O has to wait ([`deadline`]), and the TCP options set
//! on listeners and connections ([`sockopt`]), and the open-file limit ([`fdlimit`]), and
//! the socket calls made without glibc's cancellation bracket ([`sys`]).

pub mod connect;
pub mod control;
pub mod deadline;
pub mod discard;
pub mod etcd;
pub mod fdlimit;
pub mod held;
pub mod linger;
pub mod listen;
pub mod mirror;
pub mod plain;
pub mod ratestore;
pub mod relay;
pub mod respond;
pub mod shard;
pub mod sockopt;
pub mod splice;
pub mod sys;
pub mod tls;
pub mod tls_io;
pub mod zerocopy;

/// Set up the thread a connection is served on, once per thread (cheap to call again):
/// it keeps freed request buffers ([`crate::mem`]) and polls while busy ([`crate::spin`]).
/// Connections run on worker threads of runtimes that last as long as the process.
pub fn serving_thread() {
    crate::mem::keep_buffers_on_this_thread();
    crate::spin::here();
}

/// The HTTP/2 connection preface (RFC 9113 §3.4), which an `h2c: true` listener looks for.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The Pingora stream traits that a wrapper around another stream passes through to it
/// (`$field`): its id, timing, proxy and socket digests. Shutdown, TLS and peeking are the
/// wrapper's own business.
#[macro_export]
macro_rules! passthrough_digests {
    ($t:ty, $field:ident) => {
        const _: () = {
            // method calls, so that a boxed stream (`dyn IO`) passes as well as a concrete one
            #[allow(unused_imports)]
            use pingora_core::protocols::{
                GetProxyDigest as _, GetSocketDigest as _, GetTimingDigest as _, UniqueID as _,
            };
            impl pingora_core::protocols::UniqueID for $t {
                fn id(&self) -> pingora_core::protocols::UniqueIDType {
                    self.$field.id()
                }
            }
            impl pingora_core::protocols::GetTimingDigest for $t {
                fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
                    self.$field.get_timing_digest()
                }
                fn get_read_pending_time(&self) -> std::time::Duration {
                    self.$field.get_read_pending_time()
                }
                fn get_write_pending_time(&self) -> std::time::Duration {
                    self.$field.get_write_pending_time()
                }
            }
            impl pingora_core::protocols::GetProxyDigest for $t {
                fn get_proxy_digest(
                    &self,
                ) -> Option<std::sync::Arc<pingora_core::protocols::raw_connect::ProxyDigest>>
                {
                    self.$field.get_proxy_digest()
                }
                fn set_proxy_digest(
                    &mut self,
                    d: pingora_core::protocols::raw_connect::ProxyDigest,
                ) {
                    self.$field.set_proxy_digest(d)
                }
            }
            impl pingora_core::protocols::GetSocketDigest for $t {
                fn get_socket_digest(
                    &self,
                ) -> Option<std::sync::Arc<pingora_core::protocols::SocketDigest>> {
                    self.$field.get_socket_digest()
                }
                fn set_socket_digest(&mut self, d: pingora_core::protocols::SocketDigest) {
                    self.$field.set_socket_digest(d)
                }
            }
        };
    };
}

/// The Pingora stream traits of an I/O object with no socket of its own (a stand-in for a
/// session, a stream handed elsewhere): no id, no TLS, no timing or proxy digest, nothing to
/// peek; `|s| expr` gives its socket digest, if it borrows one.
#[macro_export]
macro_rules! socketless_io {
    ($t:ty) => {
        $crate::socketless_io!($t, |_s| None);
    };
    ($t:ty, |$s:ident| $socket:expr) => {
        impl pingora_core::protocols::UniqueID for $t {
            fn id(&self) -> pingora_core::protocols::UniqueIDType {
                -1
            }
        }
        impl pingora_core::protocols::Ssl for $t {}
        impl pingora_core::protocols::GetTimingDigest for $t {
            fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
                vec![]
            }
        }
        impl pingora_core::protocols::GetProxyDigest for $t {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
                None
            }
        }
        impl pingora_core::protocols::GetSocketDigest for $t {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::SocketDigest>> {
                let $s = self;
                $socket
            }
        }
        impl pingora_core::protocols::Peek for $t {}
    };
}
