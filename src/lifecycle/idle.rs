//! Coarse timeouts without a tokio timer: idle keep-alive connections, and limits on I/O.
//!
//! A connection waiting for its next request used to hold a tokio `Sleep` (about 120 bytes
//! of its future) and a wait on the process's "close idle connections" notice (about 100
//! more), for as long as it stayed idle. Here it holds a [`CoarseTimer`] of 12 bytes and,
//! once it actually has to wait, a 24-byte slot in a shared table: its deadline and its
//! waker. One thread ([`sweep`]) wakes the connections whose deadline passed, and all idle
//! ones when the process closes its idle connections ([`close_all`], the end of the
//! keep-alive linger).
//!
//! The same table holds limits on single reads and writes ([`CoarseTimer::limit`], which
//! `close_all` leaves alone): a proxied request waits for its backend's answer under one,
//! and tokio's timer for that wait (the clock read, the wheel's insertion and removal under
//! its lock) cost about 850 instructions per request, five per cent of a proxied GET.
//!
//! The table is split in shards, one per runtime thread (taken round robin), each behind its
//! own mutex: a connection registers, polls and leaves on its own thread's shard, so the
//! locks are uncontended but for the sweeper's passes. The sweeper sleeps until the earliest
//! deadline it knows of; a connection whose deadline is earlier still wakes it. Passes are at
//! least [`MIN_PASS`] apart, so a connection may be closed that much after its deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Shards of the table; threads beyond this many share them.
const SHARDS: usize = 64;
/// Slots are kept in chunks of this many, so a shard grows without copying or doubling.
const CHUNK: usize = 512;
/// The shortest time between two passes of the sweeper over the table.
const MIN_PASS: Duration = Duration::from_millis(20);
/// The longest the sweeper sleeps: a deadline this far ahead or more never has to wake it
/// (with read limits of seconds and keep-alive timeouts of a minute, a registration whose
/// deadline was earlier than every other one would otherwise wake it on every request).
const LONGEST_SLEEP_MS: u64 = 1000;
/// The longest wait a timer keeps: deadlines are kept as 32-bit milliseconds, compared
/// with wrapping arithmetic, which holds for waits below 2^31 ms. A longer keep-alive
/// timeout or I/O limit (over 12 days) is cut to this.
const MAX_WAIT_MS: u64 = 1 << 30;

/// Slot links: a free slot holds the index of the next free one (or `END`).
const END: u32 = u32::MAX;
/// A waiting idle timer, which [`close_all`] fires.
const WAITING: u32 = u32::MAX - 1;
const FIRED: u32 = u32::MAX - 2;
/// A waiting limit, which only its deadline fires.
const WAITING_LIMIT: u32 = u32::MAX - 3;
/// A tunnel's idle watchdog, which [`drain_tunnels`] fires too.
const WAITING_TUNNEL: u32 = u32::MAX - 4;

fn is_waiting(link: u32) -> bool {
    link == WAITING || link == WAITING_LIMIT || link == WAITING_TUNNEL
}

struct Slot {
    waker: Option<Waker>,
    /// Milliseconds on the coarse clock ([`now_ms`]), truncated to 32 bits.
    deadline: u32,
    link: u32,
}

#[derive(Default)]
struct Shard {
    chunks: Vec<Box<[Slot]>>,
    free: Option<u32>,
    waiting: usize,
}

impl Shard {
    fn slot(&mut self, i: u32) -> &mut Slot {
        let i = i as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    fn take(&mut self, deadline: u32, waker: Waker, state: u32) -> u32 {
        let i = match self.free {
            Some(i) => i,
            None => {
                let base = self.chunks.len() * CHUNK;
                let chunk = (0..CHUNK)
                    .map(|k| Slot {
                        waker: None,
                        deadline: 0,
                        link: if k + 1 < CHUNK {
                            (base + k + 1) as u32
                        } else {
                            END
                        },
                    })
                    .collect();
                self.chunks.push(chunk);
                base as u32
            }
        };
        let s = self.slot(i);
        let next = s.link;
        s.link = state;
        s.deadline = deadline;
        s.waker = Some(waker);
        self.free = (next != END).then_some(next);
        self.waiting += 1;
        i
    }

    /// Fire the timers whose deadline passed by `now`, every idle one if `closing` and
    /// every tunnel's if `draining`, their wakers into `woken`: the earliest deadline left
    /// (`u64::MAX` for none).
    fn fire(&mut self, now: u64, closing: bool, draining: bool, woken: &mut Vec<Waker>) -> u64 {
        let mut earliest = u64::MAX;
        if self.waiting == 0 {
            return earliest;
        }
        for s in self.chunks.iter_mut().flat_map(|c| c.iter_mut()) {
            if !is_waiting(s.link) {
                continue;
            }
            let early = (closing && s.link == WAITING) || (draining && s.link == WAITING_TUNNEL);
            if early || expired(s.deadline, now) {
                s.link = FIRED;
                self.waiting -= 1;
                woken.extend(s.waker.take());
            } else {
                let left = s.deadline.wrapping_sub(now as u32) as u64;
                earliest = earliest.min(now + left);
            }
        }
        earliest
    }

    /// Start a new wait on the taken slot `i` (a connection's timer kept from wait to wait).
    /// The waker is cloned only if the slot's is another task's.
    fn rearm(&mut self, i: u32, deadline: u32, waker: &Waker, state: u32) {
        let s = self.slot(i);
        let was_waiting = is_waiting(s.link);
        s.link = state;
        s.deadline = deadline;
        keep_waker(&mut s.waker, waker);
        if !was_waiting {
            self.waiting += 1;
        }
    }

    fn give_back(&mut self, i: u32) -> Option<Waker> {
        let free = self.free.unwrap_or(END);
        let s = self.slot(i);
        let was_waiting = is_waiting(s.link);
        s.link = free;
        let w = s.waker.take();
        if was_waiting {
            self.waiting -= 1;
        }
        self.free = Some(i);
        w
    }
}

static TABLE: [Mutex<Shard>; SHARDS] = [const {
    Mutex::new(Shard {
        chunks: Vec::new(),
        free: None,
        waiting: 0,
    })
}; SHARDS];

/// Set once idle connections must close (the process is going away).
static CLOSING: AtomicBool = AtomicBool::new(false);
/// Set once the process drains (shutdown began): tunnels look at how long they have been
/// quiet again.
static TUNNELS: AtomicBool = AtomicBool::new(false);
/// The earliest deadline the sweeper will wake for (ms on [`now_ms`]'s clock); lowered by a
/// registration with an earlier one, which then wakes the sweeper.
static NEXT: AtomicU64 = AtomicU64::new(u64::MAX);
/// Wakes the sweeper's wait, to look at [`NEXT`] again.
static KICK: Mutex<()> = Mutex::new(());
static KICKED: Condvar = Condvar::new();
static SWEEPER: Once = Once::new();

/// Deadlines are on the coarse clock: an idle timer is registered once per request on a
/// keep-alive connection, and a tick's precision is plenty for keep-alive timeouts.
fn now_ms() -> u64 {
    crate::clock::coarse_ms()
}

fn lock(i: usize) -> MutexGuard<'static, Shard> {
    // a panic while a shard was held cannot leave it inconsistent in a way that matters
    // more than closing connections late
    TABLE[i].lock().unwrap_or_else(|e| e.into_inner())
}

fn my_shard() -> usize {
    static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// `waker` in `slot`, cloned only if the slot's is another task's (a connection's waits
/// are polled by its one task).
fn keep_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        w => *w = Some(waker.clone()),
    }
}

fn expired(deadline: u32, now: u64) -> bool {
    (now as u32).wrapping_sub(deadline) as i32 >= 0
}

fn kick() {
    let _k = KICK.lock().unwrap_or_else(|e| e.into_inner());
    KICKED.notify_one();
}

/// Wake every idle connection now, and any that starts waiting later at once: the process
/// is going away (see [`super::Draining`]).
pub fn close_all() {
    CLOSING.store(true, Ordering::SeqCst);
    kick();
}

/// Wake every tunnel's idle watchdog now, and any that starts waiting later at once: the
/// process started draining, and a tunnel quiet for a second is closed rather than waited
/// for (its watchdog's [`CoarseTimer::tunnel`]).
pub fn drain_tunnels() {
    TUNNELS.store(true, Ordering::SeqCst);
    kick();
}

/// Whether [`drain_tunnels`] was called.
pub fn tunnels_draining() -> bool {
    TUNNELS.load(Ordering::SeqCst)
}

/// The sweeper's loop: wake what expired, then sleep until the next deadline (or a kick).
fn sweep() {
    let mut woken = Vec::new();
    loop {
        let passed = Instant::now();
        // Lowered by registrations made during the pass, so none is missed.
        NEXT.store(u64::MAX, Ordering::SeqCst);
        let now = now_ms();
        let closing = CLOSING.load(Ordering::SeqCst);
        let draining = TUNNELS.load(Ordering::SeqCst);
        let mut earliest = u64::MAX;
        for i in 0..SHARDS {
            let mut shard = lock(i);
            earliest = earliest.min(shard.fire(now, closing, draining, &mut woken));
            drop(shard);
            for w in woken.drain(..) {
                w.wake();
            }
        }
        NEXT.fetch_min(earliest.min(now + LONGEST_SLEEP_MS), Ordering::SeqCst);
        // NEXT is read under KICK's lock, which `kick` takes after lowering it: a lowering
        // either is seen here or wakes the wait below.
        let mut k = KICK.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if (CLOSING.load(Ordering::SeqCst) && !closing)
                || (TUNNELS.load(Ordering::SeqCst) && !draining)
            {
                break;
            }
            let next = NEXT.load(Ordering::SeqCst);
            let due = Duration::from_millis(next.saturating_sub(now_ms()).min(LONGEST_SLEEP_MS));
            let due = due.max(MIN_PASS.saturating_sub(passed.elapsed()));
            if due.is_zero() {
                break;
            }
            k = match KICKED.wait_timeout(k, due) {
                Ok((k, _)) => k,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// A wait of one connection: ready once its time has passed since it was first polled (a
/// coarse clock's step and a sweeper's pass late at most), and an idle one also when idle
/// connections close ([`close_all`]). Registered only when first polled, so a request
/// already there costs no registration and no clock reading.
///
/// A connection's successive waits (its keep-alive wait, then its backend's answer, and so
/// on, one at a time) can share one timer ([`CoarseTimer::unarmed`], [`CoarseTimer::arm`]):
/// its slot is then taken once per connection and given back when the connection ends,
/// instead of once per wait. A wait that ended is not taken off the table (that would cost
/// a lock per wait): if its deadline passes before the next wait re-arms the slot, the
/// sweeper wakes the connection's task once for nothing.
pub struct CoarseTimer {
    /// The wait in ms while `fresh`, then the deadline (ms on [`now_ms`]'s clock, truncated
    /// to 32 bits as in the table).
    deadline: u32,
    /// `(shard, slot)` once registered.
    shard: u16,
    slot: u32,
    kind: Kind,
    /// Armed and not yet polled: the deadline is still to be set.
    fresh: bool,
}

const UNREGISTERED: u32 = u32::MAX;

/// What ends a wait besides its time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A keep-alive wait: also [`close_all`].
    Idle,
    /// A limit on I/O: nothing else.
    Limit,
    /// A tunnel's idle watchdog: also [`drain_tunnels`].
    Tunnel,
}

impl Kind {
    /// A slot's link while a wait of this kind waits in it.
    fn waiting(self) -> u32 {
        match self {
            Kind::Idle => WAITING,
            Kind::Limit => WAITING_LIMIT,
            Kind::Tunnel => WAITING_TUNNEL,
        }
    }
}

impl CoarseTimer {
    /// The keep-alive wait of an idle connection, which also ends when idle connections
    /// close.
    pub fn idle(wait: Duration) -> CoarseTimer {
        CoarseTimer::new(wait, Kind::Idle)
    }

    /// A limit on a wait for I/O, which only its time ends.
    pub fn limit(wait: Duration) -> CoarseTimer {
        CoarseTimer::new(wait, Kind::Limit)
    }

    /// A tunnel's idle watchdog: ends when its time passes, or when the process starts
    /// draining ([`drain_tunnels`]).
    pub fn tunnel(wait: Duration) -> CoarseTimer {
        CoarseTimer::new(wait, Kind::Tunnel)
    }

    /// A timer for a connection's waits, each started by [`Self::arm`]. Polled before any
    /// arm, it is ready (a limit that never ends would be worse than one that ends at once).
    pub fn unarmed() -> CoarseTimer {
        CoarseTimer {
            deadline: 0,
            shard: 0,
            slot: UNREGISTERED,
            kind: Kind::Limit,
            fresh: false,
        }
    }

    fn new(wait: Duration, kind: Kind) -> CoarseTimer {
        let mut t = CoarseTimer::unarmed();
        t.arm_as(wait, kind);
        t
    }

    /// Start a new wait of `wait` (a limit, or an idle wait), counted from the next poll
    /// that has to wait; the slot, if the timer has one, is kept.
    pub fn arm(&mut self, wait: Duration, limit: bool) {
        self.arm_as(wait, if limit { Kind::Limit } else { Kind::Idle });
    }

    fn arm_as(&mut self, wait: Duration, kind: Kind) {
        self.deadline = (wait.as_millis() as u64).min(MAX_WAIT_MS) as u32;
        self.kind = kind;
        self.fresh = true;
    }

    fn closing(&self, order: Ordering) -> bool {
        match self.kind {
            Kind::Idle => CLOSING.load(order),
            Kind::Tunnel => TUNNELS.load(order),
            Kind::Limit => false,
        }
    }

    /// `Ready` once the wait is over (or, for an idle wait, idle connections are closing).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing(Ordering::Relaxed) {
            return Poll::Ready(());
        }
        if self.fresh {
            if self.deadline == 0 {
                return Poll::Ready(());
            }
            // a step more: the coarse reading may lag, and a wait never ends early
            let deadline = self.deadline as u64 + now_ms() + crate::clock::coarse_step_ms();
            self.deadline = deadline as u32;
            self.fresh = false;
            let state = self.kind.waiting();
            if self.slot == UNREGISTERED {
                self.register(cx, state);
            } else {
                lock(self.shard as usize).rearm(self.slot, self.deadline, cx.waker(), state);
            }
            // Most deadlines are later than the earliest the sweeper knows already: a read
            // settles those and leaves NEXT's cache line shared between the cores; only an
            // earlier deadline takes the line to write it (a `fetch_min` alone is a locked
            // write on every registration, from every thread).
            if NEXT.load(Ordering::SeqCst) > deadline
                && NEXT.fetch_min(deadline, Ordering::SeqCst) > deadline
            {
                kick();
            }
            // a closing pass may have gone over this shard before the slot was armed
            if self.closing(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
        if self.slot == UNREGISTERED {
            // never armed
            return Poll::Ready(());
        }
        let mut shard = lock(self.shard as usize);
        let s = shard.slot(self.slot);
        if s.link == FIRED {
            return Poll::Ready(());
        }
        keep_waker(&mut s.waker, cx.waker());
        Poll::Pending
    }

    /// Take a slot on this thread's shard (and start the sweeper the first time).
    fn register(&mut self, cx: &mut Context<'_>, state: u32) {
        SWEEPER.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("idle-sweeper".into())
                .stack_size(64 * 1024)
                .spawn(sweep);
            if let Err(e) = spawned {
                log::error!("cannot start the idle connection sweeper: {e}");
            }
        });
        let shard = my_shard();
        self.slot = lock(shard).take(self.deadline, cx.waker().clone(), state);
        self.shard = shard as u16;
    }
}

impl std::future::Future for CoarseTimer {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_expired(cx)
    }
}

impl Drop for CoarseTimer {
    fn drop(&mut self) {
        if self.slot != UNREGISTERED {
            let w = lock(self.shard as usize).give_back(self.slot);
            drop(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn slots_are_reused() {
        let mut s = Shard::default();
        let w = Waker::noop().clone();
        let a = s.take(1, w.clone(), WAITING);
        let b = s.take(2, w.clone(), WAITING_LIMIT);
        assert_ne!(a, b);
        assert_eq!(s.waiting, 2);
        s.give_back(a);
        assert_eq!(s.take(3, w.clone(), WAITING), a);
        for _ in 0..CHUNK {
            s.take(4, w.clone(), WAITING);
        }
        assert_eq!(s.chunks.len(), 2);
        assert_eq!(s.waiting, CHUNK + 2);
    }

    #[test]
    fn closing_fires_idle_waits_and_leaves_limits_to_their_deadline() {
        let mut s = Shard::default();
        let w = Waker::noop().clone();
        let idle = s.take(100, w.clone(), WAITING);
        let limit = s.take(200, w.clone(), WAITING_LIMIT);
        let mut woken = Vec::new();
        assert_eq!(s.fire(50, false, false, &mut woken), 100);
        assert!(woken.is_empty());
        assert_eq!(
            s.fire(60, true, false, &mut woken),
            200,
            "the limit is left"
        );
        assert_eq!(woken.len(), 1);
        assert_eq!(s.slot(idle).link, FIRED);
        assert_eq!(s.slot(limit).link, WAITING_LIMIT);
        assert_eq!(s.fire(200, true, false, &mut woken), u64::MAX);
        assert_eq!((woken.len(), s.waiting), (2, 0));
        assert_eq!(s.slot(limit).link, FIRED);
    }

    #[test]
    fn draining_fires_tunnel_waits_only() {
        let mut s = Shard::default();
        let w = Waker::noop().clone();
        let idle = s.take(100, w.clone(), WAITING);
        let limit = s.take(100, w.clone(), WAITING_LIMIT);
        let tunnel = s.take(100, w.clone(), WAITING_TUNNEL);
        let mut woken = Vec::new();
        assert_eq!(s.fire(50, false, true, &mut woken), 100);
        assert_eq!((woken.len(), s.waiting), (1, 2));
        assert_eq!(s.slot(tunnel).link, FIRED);
        assert_eq!(s.slot(idle).link, WAITING);
        assert_eq!(s.slot(limit).link, WAITING_LIMIT);
    }

    #[test]
    fn wrapping_deadlines() {
        assert!(expired(5, 5));
        assert!(!expired(6, 5));
        assert!(expired(u32::MAX, (u32::MAX as u64) + 3));
        assert!(!expired(2, u32::MAX as u64));
    }

    fn poll_once(t: &mut CoarseTimer) -> Poll<()> {
        t.poll_expired(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn a_rearmed_timer_keeps_its_slot_and_times_each_wait() {
        let mut t = CoarseTimer::unarmed();
        assert!(poll_once(&mut t).is_ready(), "never armed: ready");
        t.arm(Duration::from_secs(3600), true);
        assert!(poll_once(&mut t).is_pending());
        let slot = t.slot;
        assert_ne!(slot, UNREGISTERED);
        t.arm(Duration::from_millis(30), false);
        let started = Instant::now();
        std::future::poll_fn(|cx| t.poll_expired(cx)).await;
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(t.slot, slot, "the same slot for the second wait");
        // a wait abandoned once its I/O was ready, whose deadline then passes...
        t.arm(Duration::from_millis(10), true);
        assert!(poll_once(&mut t).is_pending());
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(lock(t.shard as usize).slot(slot).link, FIRED);
        // ...does not end the next wait
        t.arm(Duration::from_secs(3600), true);
        assert!(poll_once(&mut t).is_pending());
        assert!(poll_once(&mut t).is_pending());
        assert_eq!(lock(t.shard as usize).slot(slot).link, WAITING_LIMIT);
        assert_eq!(t.slot, slot);
    }

    #[tokio::test]
    async fn fires_after_its_wait() {
        let t = CoarseTimer::idle(Duration::from_millis(30));
        assert_eq!(std::mem::size_of_val(&t), 12);
        t.await;
        let far = CoarseTimer::idle(Duration::from_secs(3600));
        let mut far = std::pin::pin!(far);
        let pending = std::future::poll_fn(|cx| Poll::Ready(far.as_mut().poll(cx).is_pending()));
        assert!(pending.await);
    }
}
