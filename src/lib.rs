//! Stepstone: an edge reverse proxy, load balancer and forward proxy on Pingora.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod forward;
pub mod http;
pub mod l4;
pub mod lifecycle;
pub mod mem;
pub mod net;
pub mod observability;
pub mod policy;
pub mod server;
pub mod spin;
pub mod striped;
#[cfg(test)]
mod testkit;
pub mod tls;
pub mod upstream;
