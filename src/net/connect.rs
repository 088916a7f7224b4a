//! Connecting to a backend, for every engine that connects by itself (the lean HTTP engine,
//! L4): a connect that this machine refuses waits as [`crate::policy::shortage`] says.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Why a connect to a backend failed.
pub enum Error {
    TimedOut,
    Failed(std::io::Error),
    /// This machine refused it, for as long as the request may wait
    /// ([`crate::policy::shortage`]): the backend is not to blame.
    Shortage(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::TimedOut => f.write_str("timed out"),
            Error::Failed(e) => e.fmt(f),
            Error::Shortage(e) => write!(f, "{e} (no local resources, waited)"),
        }
    }
}

/// Connect to `addr` (TCP_NODELAY on) within `timeout`. A connect this machine refuses (out
/// of descriptors, say) is tried again after a pause, as [`crate::policy::shortage`] says,
/// unless `pooled` gives a connection to `addr` that came back meanwhile (`true`: it did).
/// `listener` and `label` name the refusal in the log.
pub async fn backend(
    listener: &str,
    label: &str,
    addr: SocketAddr,
    timeout: Duration,
    mut pooled: impl FnMut() -> Option<TcpStream>,
) -> Result<(TcpStream, bool), Error> {
    let mut shortage: Option<crate::policy::shortage::Shortage> = None;
    loop {
        // A coarse limit, not tokio's timer: a connect always waits (its first poll only
        // starts it), and the timer wheel's insertion and removal were a visible part of a
        // short connection's cost. Connect timeouts are seconds; this one may end a coarse
        // clock's step and a sweeper's pass late.
        let e = match super::deadline::within(timeout, TcpStream::connect(addr)).await {
            Some(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok((s, false));
            }
            Some(Err(e)) if crate::upstream::local::refused(&e) => e,
            Some(Err(e)) => return Err(Error::Failed(e)),
            None => return Err(Error::TimedOut),
        };
        crate::policy::shortage::warn(listener, label, &e);
        let Some(pause) = shortage.get_or_insert_with(Default::default).next(timeout) else {
            return Err(Error::Shortage(e));
        };
        tokio::time::sleep(pause).await;
        if let Some(s) = pooled() {
            return Ok((s, true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_connect_that_never_completes_times_out() {
        // A listener that never accepts, its queue filled: the kernel drops further SYNs,
        // so a connect to it waits until its limit.
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let mut held = Vec::new();
        let full = loop {
            assert!(held.len() < 64, "the accept queue never filled");
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) => panic!("connect: {e}"),
                Err(_) => break held.len(),
            }
        };
        assert!(full >= 1);
        let t = Instant::now();
        let r = backend("l", "b", addr, Duration::from_millis(300), || None).await;
        let took = t.elapsed();
        assert!(matches!(r, Err(Error::TimedOut)), "want a timeout");
        assert!(took >= Duration::from_millis(300), "ended early: {took:?}");
        assert!(took < Duration::from_secs(2), "ended late: {took:?}");
    }
}
