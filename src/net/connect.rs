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
        let e = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok((s, false));
            }
            Ok(Err(e)) if crate::upstream::local::refused(&e) => e,
            Ok(Err(e)) => return Err(Error::Failed(e)),
            Err(_) => return Err(Error::TimedOut),
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
