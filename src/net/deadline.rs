//! A time limit on an I/O future that costs nothing when the future is ready at once.

use crate::lifecycle::idle::CoarseTimer;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

/// `f`'s output, or `None` when `d` passed first (up to a coarse clock's step and a sweeper's
/// pass later: these limits are seconds, never exact to the millisecond).
///
/// Most writes and many reads on a busy connection complete on their first poll, and
/// arming a timer first would cost a clock read for nothing. So `f` is polled once first,
/// and the limit is armed only if it has to wait: it then counts from that first poll. The
/// limit is a [`CoarseTimer`], not tokio's timer: a proxied request waits under one for its
/// backend's answer every time.
pub async fn within<T>(d: Duration, f: impl Future<Output = T>) -> Option<T> {
    // an unarmed timer takes no slot and reads no clock until `f` has to wait
    within_on(&mut CoarseTimer::unarmed(), d, f).await
}

/// [`within`] on `timer`, a connection's timer kept from wait to wait (see
/// [`CoarseTimer::arm`]): armed for `d` only if `f` has to wait.
pub async fn within_on<T>(
    timer: &mut CoarseTimer,
    d: Duration,
    f: impl Future<Output = T>,
) -> Option<T> {
    let mut f = std::pin::pin!(f);
    let mut armed = false;
    std::future::poll_fn(|cx| {
        // the timer is armed and looked at only when `f` is not ready: the wake-up is
        // usually `f`'s
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if !std::mem::replace(&mut armed, true) {
            timer.arm(d, true);
        }
        timer.poll_expired(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_pending_and_timed_out() {
        assert_eq!(within(Duration::from_millis(1), async { 7 }).await, Some(7));
        let later = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            8
        };
        assert_eq!(within(Duration::from_secs(5), later).await, Some(8));
        let never = std::future::pending::<u8>();
        assert_eq!(within(Duration::from_millis(5), never).await, None);
    }

    #[tokio::test]
    async fn one_timer_for_successive_waits() {
        let mut t = CoarseTimer::unarmed();
        let d = Duration::from_secs(5);
        assert_eq!(within_on(&mut t, d, async { 7 }).await, Some(7));
        let later = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            8
        };
        assert_eq!(within_on(&mut t, d, later).await, Some(8));
        let never = std::future::pending::<u8>();
        let short = Duration::from_millis(5);
        assert_eq!(within_on(&mut t, short, never).await, None);
        let later = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            9
        };
        assert_eq!(
            within_on(&mut t, d, later).await,
            Some(9),
            "the last limit is not left"
        );
    }
}
