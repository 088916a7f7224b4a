//! Reading and dropping what a peer sends: a refused client's rest during a lingering close
//! ([`super::linger`]), a mirror backend's answer ([`super::mirror`]).
//!
//! The bytes go into one buffer per thread. A read fills it and is done with it within one
//! poll, so the buffer is never held across an await, and a task that discards holds none
//! of its own: such a task held 4-8 KiB of buffer in its future (a lingering connection's
//! task was 4.6 KiB, a mirror copy's 17 KiB), which tokio also copies whole when it makes
//! the task and again when the task ends.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Reads per wake-up, so that a peer sending fast shares the thread with the others.
const READS_PER_POLL: usize = 16;

thread_local! {
    static SINK: RefCell<[u8; 8192]> = const { RefCell::new([0; 8192]) };
}

/// Read and drop what `s` sends until it ends. `Ok` at its end (EOF); `TimedOut` after
/// `idle` without a byte, or `total` in all; the read's error if one fails.
pub async fn discard<S>(s: &mut S, idle: Duration, total: Duration) -> std::io::Result<()>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let silence = tokio::time::sleep(idle);
    tokio::pin!(silence);
    let drained = std::future::poll_fn(|cx| poll_discard(s, idle, silence.as_mut(), cx));
    match tokio::time::timeout(total, drained).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn poll_discard<S>(
    s: &mut S,
    idle: Duration,
    mut silence: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let ended = SINK.with(|sink| {
        // a poll never runs inside another on one thread, so the buffer is free
        let Ok(mut sink) = sink.try_borrow_mut() else {
            return Some(Err(std::io::Error::other("discard buffer in use")));
        };
        let (mut got, mut drained) = (false, false);
        for _ in 0..READS_PER_POLL {
            let mut buf = ReadBuf::new(&mut sink[..]);
            match Pin::new(&mut *s).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Some(Ok(())),
                Poll::Ready(Ok(())) => got = true,
                Poll::Ready(Err(e)) => return Some(Err(e)),
                Poll::Pending => {
                    drained = true;
                    break;
                }
            }
        }
        // one clock read per poll that found bytes, not one per read
        if got {
            silence.as_mut().reset(Instant::now() + idle);
        }
        if !drained {
            // more may be there: come back after the other tasks had their turn
            cx.waker().wake_by_ref();
        }
        None
    });
    if let Some(r) = ended {
        return Poll::Ready(r);
    }
    match std::future::Future::poll(silence, cx) {
        Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Everything sent is read to its end, past one poll's worth of reads; a silent peer
    /// times out after `idle`, an endless one after `total`.
    #[tokio::test]
    async fn discards_to_the_end_and_bounds_silence_and_length() {
        let (mut peer, mut s) = tokio::io::duplex(1024);
        let sent = tokio::spawn(async move {
            for _ in 0..400 {
                peer.write_all(&[7u8; 1000]).await?;
            }
            peer.shutdown().await
        });
        let r = discard(&mut s, Duration::from_secs(5), Duration::from_secs(10)).await;
        assert!(r.is_ok(), "{r:?}");
        assert!(matches!(sent.await, Ok(Ok(()))));

        let (_quiet, mut s) = tokio::io::duplex(64);
        let t = std::time::Instant::now();
        let r = discard(&mut s, Duration::from_millis(50), Duration::from_secs(10)).await;
        assert_eq!(r.map_err(|e| e.kind()), Err(std::io::ErrorKind::TimedOut));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

        let (mut peer, mut s) = tokio::io::duplex(64);
        tokio::spawn(async move {
            while peer.write_all(b"more").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let t = std::time::Instant::now();
        let r = discard(&mut s, Duration::from_secs(5), Duration::from_millis(200)).await;
        assert_eq!(r.map_err(|e| e.kind()), Err(std::io::ErrorKind::TimedOut));
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    }
}
