//! A connection's future in two stages: a boxed first stage (admission, protocol
//! detection), then the stage it spends its life in, held inline.
//!
//! An `async` block keeps room for everything any of its steps holds across an await, and
//! for its captured arguments until it ends. A connection's first steps hold things its
//! idle wait does not (the accepted stream before admission, the h2c preface peek); in one
//! block they would be room in every idle connection for as long as it stays open. Here the
//! first stage is a box of its own, freed when it ends, and the second stage takes its
//! place in the connection's allocation.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What the first stage ends in: the connection's outcome, or the second stage's inputs.
pub enum Next<T, R> {
    Done(R),
    Then(T),
}

/// The future [`staged`] makes: the first stage's box and the maker of the second, then the
/// second stage itself.
pub enum Staged<P, F, L> {
    First(Pin<Box<P>>, F),
    Second(L),
    Ended,
}

/// `first`, then, if it ends in [`Next::Then`], the future `then` makes of its inputs.
pub fn staged<P, F, L, T, R>(first: P, then: F) -> Staged<P, F, L>
where
    P: Future<Output = Next<T, R>>,
    F: FnOnce(T) -> L,
    L: Future<Output = R>,
{
    Staged::First(Box::pin(first), then)
}

impl<P, F, L, T, R> Future for Staged<P, F, L>
where
    P: Future<Output = Next<T, R>>,
    F: FnOnce(T) -> L,
    L: Future<Output = R>,
{
    type Output = R;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        // SAFETY: only `Second`'s future is pinned in place, and it is never moved: it is
        // polled through a pin made here, and leaves only by being dropped in place when the
        // variant is overwritten. `First` pins its future in its own box, so moving that
        // variant out (below) moves nothing pinned.
        let this = unsafe { self.get_unchecked_mut() };
        if let Staged::First(first, _) = this {
            let next = std::task::ready!(first.as_mut().poll(cx));
            if let Staged::First(_, then) = std::mem::replace(this, Staged::Ended) {
                match next {
                    Next::Done(r) => return Poll::Ready(r),
                    Next::Then(inputs) => *this = Staged::Second(then(inputs)),
                }
            }
        }
        match this {
            Staged::Second(second) => {
                // SAFETY: see above; `second` stays where it is until dropped
                let r = std::task::ready!(unsafe { Pin::new_unchecked(second) }.poll(cx));
                *this = Staged::Ended;
                Poll::Ready(r)
            }
            _ => panic!("a staged future polled after it ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn the_second_stage_runs_on_what_the_first_handed_over() {
        let mut f = Box::pin(staged(
            async { Next::<u32, u32>::Then(20) },
            |n| async move {
                let mut yielded = false;
                std::future::poll_fn(|_| {
                    if std::mem::replace(&mut yielded, true) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
                n + 1
            },
        ));
        // the first stage ends at once; the second yields once
        assert_eq!(poll_once(f.as_mut()), Poll::Pending);
        assert!(matches!(*f, Staged::Second(_)));
        assert_eq!(poll_once(f.as_mut()), Poll::Ready(21));
    }

    #[test]
    fn a_first_stage_that_ends_the_connection_makes_no_second() {
        let made = std::cell::Cell::new(false);
        let mut f = Box::pin(staged(async { Next::<(), u32>::Done(7) }, |()| {
            made.set(true);
            async { 0 }
        }));
        assert_eq!(poll_once(f.as_mut()), Poll::Ready(7));
        assert!(!made.get());
    }
}
