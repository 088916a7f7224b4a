//! The HTTP/3 listeners' QUIC counters: handshakes by outcome, connections (total and open),
//! request streams, address validations (Retry) and connections refused, and the loss of
//! each connection (packets lost, bytes retransmitted), added when it closes.

use super::{counter_vec, reg};
use once_cell::sync::Lazy;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

pub static HANDSHAKES: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_quic_handshakes_total",
        "QUIC handshakes by outcome (ok, failed, timeout)",
        &["listener", "result"],
    )
});
pub static CONNECTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_quic_connections_total",
        "QUIC connections established",
        &["listener"],
    )
});
pub static OPEN: Lazy<IntGaugeVec> = Lazy::new(|| {
    reg(IntGaugeVec::new(
        Opts::new(
            "stepstone_quic_connections_open",
            "QUIC connections open now",
        ),
        &["listener"],
    )
    .unwrap_or_else(|e| panic!("metric stepstone_quic_connections_open: {e}")))
});
pub static STREAMS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_quic_streams_total",
        "HTTP/3 request streams accepted",
        &["listener"],
    )
});
pub static RETRIES: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_quic_retries_total",
        "New QUIC clients asked to prove their address (Retry) under a flood of handshakes",
        &["listener"],
    )
});
pub static PACKETS_LOST: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_quic_packets_lost_total",
        "QUIC packets declared lost (their data is retransmitted), by closed connection",
        &["listener"],
    )
});
pub static BYTES_RETRANSMITTED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_quic_bytes_retransmitted_total",
        "Bytes of the QUIC packets declared lost, by closed connection",
        &["listener"],
    )
});
pub static PACKETS_SENT: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_quic_packets_sent_total",
        "QUIC packets sent, by closed connection",
        &["listener"],
    )
});

/// Show every series of `listener` at zero from the start.
pub fn declare(listener: &str) {
    for r in ["ok", "failed", "timeout"] {
        HANDSHAKES.with_label_values(&[listener, r]);
    }
    CONNECTIONS.with_label_values(&[listener]);
    OPEN.with_label_values(&[listener]);
    STREAMS.with_label_values(&[listener]);
    RETRIES.with_label_values(&[listener]);
    PACKETS_LOST.with_label_values(&[listener]);
    BYTES_RETRANSMITTED.with_label_values(&[listener]);
    PACKETS_SENT.with_label_values(&[listener]);
}
