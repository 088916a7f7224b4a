//! The process's allocator (mimalloc), the thread that gives freed memory back, and
//! [`pin_in_place`] for the futures boxed on every request.
//!
//! The binary installs [`Allocator`] as its global allocator; the library and its tests run
//! on the system allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_char, c_int, c_void};
use std::future::Future;
use std::pin::Pin;

// Links libmimalloc (the C library is built by `libmimalloc-sys`, a dependency of the
// `mimalloc` crate); the functions below are its stable C API, the same in v2 and v3.
use mimalloc as _;

extern "C" {
    fn mi_malloc(size: usize) -> *mut c_void;
    fn mi_zalloc(size: usize) -> *mut c_void;
    fn mi_realloc(p: *mut c_void, newsize: usize) -> *mut c_void;
    fn mi_malloc_aligned(size: usize, alignment: usize) -> *mut c_void;
    fn mi_zalloc_aligned(size: usize, alignment: usize) -> *mut c_void;
    fn mi_realloc_aligned(p: *mut c_void, newsize: usize, alignment: usize) -> *mut c_void;
    fn mi_free(p: *mut c_void);
    fn mi_collect(force: bool);
}

extern "C" {
    // libcrypto's allocation hooks (OpenSSL 1.1 and 3, built by `openssl-sys`); taken only
    // before its first allocation.
    fn CRYPTO_set_mem_functions(
        m: unsafe extern "C" fn(usize, *const c_char, c_int) -> *mut c_void,
        r: unsafe extern "C" fn(*mut c_void, usize, *const c_char, c_int) -> *mut c_void,
        f: unsafe extern "C" fn(*mut c_void, *const c_char, c_int),
    ) -> c_int;
}

unsafe extern "C" fn crypto_malloc(n: usize, _: *const c_char, _: c_int) -> *mut c_void {
    // SAFETY: plain C allocation; OpenSSL frees it through `crypto_free`
    unsafe { mi_malloc(n) }
}

unsafe extern "C" fn crypto_realloc(
    p: *mut c_void,
    n: usize,
    _: *const c_char,
    _: c_int,
) -> *mut c_void {
    // SAFETY: `p` is null or came from `crypto_malloc`/`crypto_realloc`
    unsafe { mi_realloc(p, n) }
}

unsafe extern "C" fn crypto_free(p: *mut c_void, _: *const c_char, _: c_int) {
    // SAFETY: `p` is null or came from `crypto_malloc`/`crypto_realloc`
    unsafe { mi_free(p) }
}

/// Send OpenSSL's allocations to mimalloc; `false` when OpenSSL had already allocated (it
/// then keeps the C library's `malloc`). To be called first thing in `main`.
///
/// OpenSSL takes a 16 KiB read buffer from `malloc` for each TLS record it reads and frees
/// it after (the acceptor sets `SSL_MODE_RELEASE_BUFFERS`, which keeps an idle TLS
/// connection small): callgrind put glibc's `malloc`/`free` at ~650 instructions per HTTP/2
/// request, and the handshakes allocate a few hundred small objects each.
pub fn openssl_on_mimalloc() -> bool {
    // SAFETY: the hooks are plain C functions over mimalloc, which is thread-safe; OpenSSL
    // refuses them (returns 0) once it has allocated anything with the previous ones.
    unsafe { CRYPTO_set_mem_functions(crypto_malloc, crypto_realloc, crypto_free) == 1 }
}

/// Every mimalloc block is aligned to a machine word, so a layout that asks no more than
/// that takes the plain entry points.
const WORD: usize = std::mem::size_of::<usize>();

/// The buffer sizes the engines allocate and free on every request (a request head, a
/// response head with its first body bytes, a relay buffer), and how many freed blocks of
/// each a thread keeps for its next request. Above 1 KiB every mimalloc allocation takes its
/// generic path (a page queue lookup, and the page retired again when its one block is
/// freed): ~110 instructions per buffer, four buffers per proxied GET.
const CLASSES: [usize; 4] = [4096, 8192, 16384, 65536];
const KEEP: [usize; 4] = [4, 4, 4, 2];

/// One thread's kept blocks. Off until the thread says it serves connections (runtime worker
/// threads live as long as the process; blocks kept by a thread that exits would be lost).
struct Kept {
    on: bool,
    count: [usize; 4],
    blocks: [[*mut u8; 4]; 4],
}

thread_local! {
    // const and without a destructor: usable from the allocator at any point of a thread's
    // life, and never allocates itself
    static KEPT: std::cell::UnsafeCell<Kept> = const {
        std::cell::UnsafeCell::new(Kept {
            on: false,
            count: [0; 4],
            blocks: [[std::ptr::null_mut(); 4]; 4],
        })
    };
}

/// Let this thread keep freed request buffers for its next requests (see [`CLASSES`]).
/// Called by the threads that serve connections; cheap to call again.
pub fn keep_buffers_on_this_thread() {
    // SAFETY: the cell is this thread's own and no reference to it outlives this call.
    KEPT.with(|k| unsafe { (*k.get()).on = true });
}

#[inline]
fn class_of(size: usize) -> Option<usize> {
    CLASSES.iter().position(|&c| c == size)
}

/// A kept block of class `c`, if this thread has one.
#[inline]
fn take(c: usize) -> Option<*mut u8> {
    // SAFETY: the cell is this thread's own; the allocator does not re-enter itself here.
    KEPT.with(|k| unsafe {
        let k = &mut *k.get();
        if k.count[c] == 0 {
            return None;
        }
        k.count[c] -= 1;
        Some(k.blocks[c][k.count[c]])
    })
}

/// Keep `p` (a block of class `c`) for this thread's next request; `false`: free it.
#[inline]
fn keep(c: usize, p: *mut u8) -> bool {
    // SAFETY: as in `take`.
    KEPT.with(|k| unsafe {
        let k = &mut *k.get();
        if !k.on || k.count[c] >= KEEP[c] {
            return false;
        }
        k.blocks[c][k.count[c]] = p;
        k.count[c] += 1;
        true
    })
}

/// mimalloc as the global allocator, through its plain `mi_malloc` wherever the layout
/// allows.
///
/// `mimalloc::MiMalloc` sends every allocation through `mi_malloc_aligned`, whose fast path
/// only holds for blocks up to 1 KiB whose free block happens to be aligned; anything bigger
/// (the request and response buffers, several per request) took the generic aligned path and
/// an over-allocation check: about 370 of the ~18,000 instructions of a proxied GET
/// (callgrind). `mi_malloc` is what mimalloc's own `malloc` override does for the same sizes.
pub struct Allocator;

// SAFETY: each method forwards to the mimalloc function with the same contract; layouts that
// need more than word alignment go to the aligned variants, and all blocks are freed by
// `mi_free`, which takes pointers from every mimalloc entry point. A kept block is a
// mimalloc block of exactly its class's size, freed by its user and handed out again only
// for a layout of that size and word alignment.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            if let Some(p) = class_of(layout.size()).and_then(take) {
                return p;
            }
            mi_malloc(layout.size()) as *mut u8
        } else {
            mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_zalloc(layout.size()) as *mut u8
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.align() <= WORD && class_of(layout.size()).is_some_and(|c| keep(c, ptr)) {
            return;
        }
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

/// `make()`'s future, pinned on the heap and made there.
///
/// `Box::pin(f())` makes the future on the stack and, once the box is allocated, copies all
/// of it there: the size of its largest state, though only the arguments are set yet. For
/// the futures boxed per request (a fast-path exchange, about 2.9 KiB; an HTTP/2 stream's,
/// 3.8 KiB) that was one `memcpy` per request into memory not yet in cache (perf: 1.2% of
/// the proxy's CPU on GET /ok). Allocated first, the box is where the future's constructor
/// writes (the compiler passes it as the call's return slot), and nothing is copied.
#[inline(always)]
pub fn pin_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let mut b = Box::<F>::new_uninit();
    b.write(make());
    // SAFETY: written just above
    Box::into_pin(unsafe { b.assume_init() })
}

/// Gives freed memory back to the OS while the proxy idles.
///
/// mimalloc returns the pages freed after a burst (request and response buffers of
/// thousands of connections served at once) only after a purge delay, and only when a later
/// allocation looks at the pending purges. An idle proxy allocates nothing, so without this
/// its RSS stayed at the burst's peak (measured: 18 KB per idle connection after 10,000
/// requests at once, 1.9 KB with the purge done). A purge delay of zero instead costs an
/// `madvise` for every page freed under load (a third more CPU per request, measured), so
/// the delay stays and this thread runs the due purges once a second; when none is due the
/// call returns after one atomic load.
pub fn return_freed_memory() {
    let spawned = std::thread::Builder::new()
        .name("mem-purge".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            // SAFETY: mi_collect takes no pointers; it is safe from any thread at any time.
            unsafe { mi_collect(false) };
        });
    if let Err(e) = spawned {
        eprintln!("stepstone: cannot start the memory purge thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future boxed in place runs as one boxed by `Box::pin`, its captures intact.
    #[test]
    fn pin_in_place_runs_the_future_it_made() {
        let words = [String::from("in"), String::from("place")];
        let mut f = pin_in_place(|| async move { words.join(" ") });
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert_eq!(
            f.as_mut().poll(&mut cx),
            std::task::Poll::Ready(String::from("in place"))
        );
    }

    /// A freed request buffer comes back for the next allocation of its size on a thread
    /// that keeps them, up to the bound; other sizes and other threads are not kept.
    #[test]
    fn request_buffers_are_kept_per_thread_and_bounded() {
        let Ok(l) = Layout::from_size_align(16384, 1) else {
            panic!("layout");
        };
        std::thread::spawn(move || {
            let a = Allocator;
            // SAFETY: each block is freed once, with its layout.
            unsafe {
                let p = a.alloc(l);
                a.dealloc(p, l);
                let q = a.alloc(l);
                a.dealloc(q, l);
                assert_eq!(KEPT.with(|k| (*k.get()).count[2]), 0, "off by default");
            }
        })
        .join()
        .map_err(|_| "thread")
        .unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            let a = Allocator;
            keep_buffers_on_this_thread();
            // SAFETY: as above; blocks kept at the end are the thread's to lose.
            unsafe {
                let p = a.alloc(l);
                a.dealloc(p, l);
                assert_eq!(a.alloc(l), p, "the kept block comes back");
                let many: Vec<*mut u8> = (0..10).map(|_| a.alloc(l)).collect();
                for &m in &many {
                    a.dealloc(m, l);
                }
                a.dealloc(p, l);
                assert_eq!(KEPT.with(|k| (*k.get()).count[2]), KEEP[2]);
                let Ok(odd) = Layout::from_size_align(5000, 1) else {
                    panic!("layout");
                };
                let o = a.alloc(odd);
                a.dealloc(o, odd);
                assert_eq!(KEPT.with(|k| (*k.get()).count), [0, 0, KEEP[2], 0]);
            }
        })
        .join()
        .map_err(|_| "thread")
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Every size and alignment class a Rust program asks for comes back aligned, zeroed when
    /// asked, and keeps its contents across a realloc.
    #[test]
    fn blocks_are_aligned_zeroed_and_kept_across_realloc() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 16, 24, 40, 100, 1000, 1025, 4096, 70_000, 1 << 21] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    panic!("bad layout {size}/{align}");
                };
                // SAFETY: the layout has a non-zero size; every block is freed once below.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "alloc {size}/{align}");
                    assert_eq!(p as usize % align, 0, "alloc {size}/{align}");
                    std::ptr::write_bytes(p, 0xa5, size);
                    let q = a.realloc(p, layout, size * 2);
                    assert_eq!(q as usize % align, 0, "realloc {size}/{align}");
                    assert_eq!(*q.add(size - 1), 0xa5, "realloc kept {size}/{align}");
                    a.dealloc(q, layout);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zalloc {size}/{align}");
                    assert!((0..size).all(|i| *z.add(i) == 0), "zeroed {size}/{align}");
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
