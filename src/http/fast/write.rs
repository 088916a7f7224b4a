//! How the lean engine's answers leave: a response's last bytes, flushed when the connection
//! stays open, and the connection's end when it does not.

use super::Guarded;
use crate::net::listen::PlainTcp;
use std::io::IoSlice;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// End a connection after its last response. A plaintext socket's last response took its
/// FIN along ([`write_last`]), or its close sends one behind what a relay wrote, so a
/// `shutdown` here would add nothing. A TLS stream's shutdown writes its close_notify and
/// sends it with what the last response left unflushed: one send, within `timeout` (the
/// client's, as a flush of the response would have had).
pub(super) async fn end(g: &mut Guarded, timeout: Duration) {
    if g.inner().as_any().is::<PlainTcp>() {
        return;
    }
    let _ = tokio::time::timeout(timeout, g.shutdown()).await;
}

/// Write a response's last bytes: flushed when the connection stays open (`keep`); when it
/// closes, left to [`end`], which sends them with the close_notify of a TLS stream. On a
/// plaintext socket that closes they leave with the FIN in one segment
/// ([`PlainTcp::poll_send_last`]): a connection-close request costs the client one segment
/// and one acknowledgement fewer.
pub(super) async fn write_last(
    g: &mut Guarded,
    data: &[u8],
    timeout: Duration,
    keep: bool,
) -> std::io::Result<()> {
    write_last_parts(g, &mut [IoSlice::new(data)], timeout, keep).await
}

/// [`write_last`] of `bufs` in order, gathered: on a plain socket in one `sendmsg` where the
/// send buffer takes them (a head and a body that lies elsewhere, as a cache hit's).
pub(super) async fn write_last_parts(
    g: &mut Guarded,
    bufs: &mut [IoSlice<'_>],
    timeout: Duration,
    keep: bool,
) -> std::io::Result<()> {
    let w = async {
        if !keep {
            if let Some(tcp) = g.inner().as_any().downcast_ref::<PlainTcp>() {
                return send_last(tcp, bufs).await;
            }
        }
        match bufs {
            // `send`, not the `sendmsg` a gathered write takes: its iovec is copied in
            [one] => g.inner_mut().write_all(one).await?,
            _ => write_all_vectored(g.inner_mut(), bufs).await?,
        }
        match keep {
            true => g.inner_mut().flush().await,
            // left to `end`, with a TLS stream's close_notify
            false => Ok(()),
        }
    };
    match crate::net::deadline::within(timeout, w).await {
        Some(r) => r,
        None => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Write `data` and flush it (a TLS stream buffers its records until then).
pub(super) async fn write_flush(
    g: &mut Guarded,
    data: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    write_last_parts(g, &mut [IoSlice::new(data)], timeout, true).await
}

/// All of `bufs`, then the FIN, which takes the tail that `MSG_MORE` held back.
async fn send_last(tcp: &PlainTcp, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match std::future::poll_fn(|cx| tcp.poll_send_last(cx, bufs)).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => IoSlice::advance_slices(&mut bufs, n),
        }
    }
    // Always after a held tail: without it the tail would wait for the close.
    tcp.shutdown_write()
}

/// Write all of `bufs` in order, in as few calls as the writer takes: a plain socket takes
/// them together (one `sendmsg`), a TLS stream one buffer a call.
async fn write_all_vectored<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => IoSlice::advance_slices(&mut bufs, n),
        }
    }
    Ok(())
}
