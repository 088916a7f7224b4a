//! Integration tests: one binary so that Pingora is linked once. Each module starts real
//! origins and the real `stepstone` binary on loopback and speaks real protocols to them.

mod support;

mod balancing;
mod cache;
mod cli;
mod differential;
mod differential_h2;
mod divergences;
mod fast;
mod fleet;
mod forward;
mod grpc;
mod h2cancel;
mod h2expect;
mod hardening;
mod interim;
mod l4;
mod ops;
mod protocol;
mod reload;
mod reverse;
mod streaming;
mod tls;
