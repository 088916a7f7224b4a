//! `tls.handshake_timeout`: Pingora's listener gives a TLS handshake a fixed 60 s, long
//! enough for a few thousand idle sockets to hold a port (a slowloris on TLS). A pre-TLS hook
//! arms a deadline for each accepted connection; the app disarms it when the handshaken
//! stream arrives. A connection still pending at its deadline has its socket shut down,
//! which fails the handshake and frees it. The socket is recognised by its inode, never by
//! its descriptor number alone, so a descriptor reused by another socket is never touched.

use async_trait::async_trait;
use once_cell::sync::Lazy;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections whose handshake is under way: descriptor → socket inode.
static PENDING: Lazy<Mutex<HashMap<RawFd, u64>>> = Lazy::new(Mutex::default);

fn inode(fd: RawFd) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat only writes into `st`; a closed or reused descriptor is a plain error
    // or another inode, both handled by the caller.
    let r = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    (r == 0).then(|| {
        // SAFETY: fstat succeeded and filled the struct.
        unsafe { st.assume_init() }.st_ino
    })
}

/// The deadline, in front of an optional other pre-TLS step (the PROXY header).
pub struct HandshakeDeadline {
    pub timeout: Duration,
    pub listener: String,
    pub then: Option<Arc<dyn PreTlsProcess>>,
}

#[async_trait]
impl PreTlsProcess for HandshakeDeadline {
    async fn process(&self, stream: &mut L4Stream) -> pingora_core::Result<()> {
        let fd = stream.as_raw_fd();
        if let Some(ino) = inode(fd) {
            if let Ok(mut p) = PENDING.lock() {
                p.insert(fd, ino);
            }
            let (t, name) = (self.timeout, self.listener.clone());
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                let expired = match PENDING.lock() {
                    Ok(mut p) if p.get(&fd) == Some(&ino) && inode(fd) == Some(ino) => {
                        p.remove(&fd);
                        true
                    }
                    _ => false,
                };
                if expired {
                    log::info!("{name}: TLS handshake not complete after {t:?}: closing");
                    // SAFETY: the descriptor still names the socket this deadline was armed
                    // for (same inode); shutting it down only fails its pending I/O.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
            });
        }
        match &self.then {
            Some(next) => next.process(stream).await,
            None => Ok(()),
        }
    }
}

/// The handshake on `fd` completed: its deadline no longer applies.
pub fn handshake_done(fd: RawFd) {
    if let Ok(mut p) = PENDING.lock() {
        p.remove(&fd);
    }
}
