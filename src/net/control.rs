//! What a reload tells a listener's accept loops: go on, stop, or hand their sockets over.
//!
//! A listener that keeps its address but changes its settings (limits, TLS, protocol, the
//! upstreams of an L4 listener, ...) is replaced by a new one on the same listening sockets:
//! the old accept loops stop and give their sockets back ([`Remote::hand_over`]), and the new
//! loops accept on them. Connections the kernel queued in between wait in the backlog,
//! instead of being reset as closing the socket and binding a new one would do (and the
//! address is never free for someone else to take).

use std::net::TcpListener;
use std::time::Duration;

/// A listener's socket with its key in the fd table (see [`super::shard::key`]).
pub type Socket = (String, TcpListener);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Order {
    Accept,
    Stop,
    HandOver,
}

/// How an accept loop was told to end.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ended {
    /// Removed by a reload: close the socket.
    Stop,
    /// Replaced by a reload: give the socket to [`Control::giver`].
    HandOver,
}

/// The accept loops' end (one clone each). `S` is what they hand over: a TCP listening
/// socket, or an HTTP/3 side's QUIC endpoint.
pub struct Control<S = Socket> {
    orders: tokio::sync::watch::Receiver<Order>,
    sockets: std::sync::mpsc::Sender<S>,
}

impl<S> Clone for Control<S> {
    fn clone(&self) -> Self {
        Control {
            orders: self.orders.clone(),
            sockets: self.sockets.clone(),
        }
    }
}

/// The reload's end, kept with the listener's handle.
pub struct Remote<S = Socket> {
    orders: tokio::sync::watch::Sender<Order>,
    sockets: std::sync::mpsc::Receiver<S>,
}

/// A new listener's pair of ends.
pub fn pair<S>() -> (Remote<S>, Control<S>) {
    let (otx, orx) = tokio::sync::watch::channel(Order::Accept);
    let (stx, srx) = std::sync::mpsc::channel();
    (
        Remote {
            orders: otx,
            sockets: srx,
        },
        Control {
            orders: orx,
            sockets: stx,
        },
    )
}

impl<S> Control<S> {
    /// Resolves when the loop must end, and says how.
    pub async fn ended(&mut self) -> Ended {
        let order = self
            .orders
            .wait_for(|o| *o != Order::Accept)
            .await
            .map(|o| *o);
        match order {
            Ok(Order::HandOver) => Ended::HandOver,
            Ok(_) => Ended::Stop,
            // a dropped remote is no order
            Err(_) => std::future::pending().await,
        }
    }

    /// Where a loop that ends with [`Ended::HandOver`] leaves its socket.
    pub fn giver(&self) -> std::sync::mpsc::Sender<S> {
        self.sockets.clone()
    }
}

impl<S> Remote<S> {
    /// Stop accepting: the sockets are closed, open connections finish.
    pub fn stop(&self) {
        self.orders.send_replace(Order::Stop);
    }

    /// Stop accepting and take every loop's socket (with the connections queued on it). Waits
    /// until every loop holding a [`Control`] has ended, at most `within`.
    pub fn hand_over(&self, within: Duration) -> Result<Vec<S>, String> {
        self.orders.send_replace(Order::HandOver);
        let until = std::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.sockets.recv_timeout(left) {
                Ok(s) => out.push(s),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "its accept loops did not hand their sockets over within {within:?}"
                    ))
                }
            }
        }
        if out.is_empty() {
            return Err("its accept loops had no socket to hand over".into());
        }
        Ok(out)
    }
}
