//! The accept loop of plaintext listeners (HTTP and TCP).
//!
//! Pingora's listening service spawns one task per connection whose future is sized for a
//! TLS handshake under a timeout (about 2.5 KB, measured with heaptrack), and gives every
//! plaintext stream a 1.4 KB write buffer. Both stay allocated for as long as a keep-alive
//! connection lives, idle or not: together they were most of the ~7 KB each idle connection
//! cost. Plaintext listeners accept here instead, with a task that holds only the app's
//! connection future, and streams with no L4 buffers (the fast path writes each response in
//! one buffer; the guard coalesces Pingora's writes, see [`super::guard`]).
//!
//! The listening socket goes through Pingora's fd table like Pingora's own listeners, under
//! the same key (the address as written), so graceful upgrades hand it over either way.
//! TLS listeners keep Pingora's service: their handshake needs it.

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;

/// Pingora's listen backlog, kept.
const BACKLOG: u32 = 65535;

pub struct PlainService<A> {
    name: String,
    addr: SocketAddr,
    app: Arc<A>,
}

impl<A> PlainService<A> {
    pub fn new(name: String, addr: SocketAddr, app: A) -> Self {
        PlainService {
            name,
            addr,
            app: Arc::new(app),
        }
    }
}

/// The listening socket: the one handed over by the old process on an upgrade, else a new
/// one, recorded in the fd table for the next upgrade.
async fn listener(
    addr: SocketAddr,
    fds: Option<ListenFds>,
) -> std::io::Result<tokio::net::TcpListener> {
    let key = addr.to_string();
    if let Some(fd) = fds.as_ref().and_then(|f| f.lock().get(&key).copied()) {
        // SAFETY: the fd table holds listening sockets this process received from the old
        // one (or bound itself); each address is taken by exactly one service.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        l.set_nonblocking(true)?;
        return tokio::net::TcpListener::from_std(l);
    }
    let mut tries = 0;
    let l = loop {
        let sock = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        sock.set_reuseaddr(true)?;
        match sock.bind(addr) {
            Ok(()) => break sock.listen(BACKLOG)?,
            // as Pingora does: the address may be released a moment later
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 5 => {
                tries += 1;
                log::warn!("{addr} is in use, will try again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(f) = &fds {
        f.lock().add(key, l.as_raw_fd());
    }
    Ok(l)
}

#[async_trait]
impl<A> Service for PlainService<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let l = match listener(self.addr, fds).await {
            Ok(l) => l,
            Err(e) => {
                // Pingora's listeners panic here too: a server that cannot listen must not run.
                log::error!("{}: cannot listen on {}: {e}", self.name, self.addr);
                std::process::exit(1);
            }
        };
        log::info!("{}: listening on {}", self.name, self.addr);
        loop {
            let accepted = tokio::select! {
                r = l.accept() => r,
                c = shutdown.changed() => {
                    if c.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            };
            let (tcp, _) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    log::error!("{}: accept() failed: {e}", self.name);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let app = self.app.clone();
            let shutdown = shutdown.clone();
            pingora_runtime::current_handle().spawn(async move {
                let _ = tcp.set_nodelay(true);
                let fd = tcp.as_raw_fd();
                let mut s = pingora_core::protocols::l4::stream::Stream::from(tcp);
                let digest = SocketDigest::from_raw_fd(fd);
                // filled now: the client address is read on every request
                let _ = digest.peer_addr();
                s.set_socket_digest(digest);
                let mut next = app.process_new(Box::new(s), &shutdown).await;
                while let Some(s) = next {
                    next = app.process_new(s, &shutdown).await;
                }
            });
        }
        log::info!("{}: stopped accepting on {}", self.name, self.addr);
        drop(l);
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }
}
