//! Integration tests: one binary so that Pingora is linked once. Each module starts real
//! origins and the real `stepstone` binary on loopback and speaks real protocols to them.

mod support;

mod accept;
mod acks;
mod acme;
mod balancing;
mod bodies;
mod cache;
mod cli;
mod compression;
mod differential;
mod differential_bodies;
mod differential_cache;
mod differential_gen;
mod differential_h2;
mod differential_h3;
mod differential_protocols;
mod differential_tunnel;
mod divergences;
mod docs;
mod fast;
mod fdlimit;
mod fleet;
mod forward;
mod grpc;
mod h2cancel;
mod h2conn;
mod h2expect;
mod hardening;
mod http3;
mod http3_cache;
mod http3_ops;
mod interim;
mod l4;
mod mirror;
mod ops;
mod protocol;
mod reload;
mod retries;
mod reverse;
mod sticky;
mod streaming;
mod tls;
mod tracing;
mod upgrade;
