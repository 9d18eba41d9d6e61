//! A global allocator that counts live heap bytes and allocations, for the memory figures.
//!
//! A bench binary installs it with `#[global_allocator] static A: Counting = Counting;` and
//! turns counting on around what it measures ([`Counting::start`]); while off, every call is a
//! plain pass-through to `System` plus one relaxed load, so timings taken in the same binary
//! are not disturbed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

/// The counting allocator; its counters are process-wide.
pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// What the allocator has counted since [`Counting::start`].
#[derive(Clone, Copy, Debug)]
pub struct HeapSnapshot {
    /// Bytes allocated and not yet freed (negative if more was freed than allocated).
    pub bytes: isize,
    /// Allocations (and reallocations) made.
    pub allocations: usize,
}

impl Counting {
    /// Zeroes the counters and starts counting.
    pub fn start() {
        LIVE_BYTES.store(0, Ordering::SeqCst);
        ALLOCATIONS.store(0, Ordering::SeqCst);
        ON.store(true, Ordering::SeqCst);
    }

    /// Stops counting; the counters keep their values.
    pub fn stop() {
        ON.store(false, Ordering::SeqCst);
    }

    /// The counters now.
    pub fn snapshot() -> HeapSnapshot {
        HeapSnapshot {
            bytes: LIVE_BYTES.load(Ordering::SeqCst),
            allocations: ALLOCATIONS.load(Ordering::SeqCst),
        }
    }
}

fn counting() -> bool {
    ON.load(Ordering::Relaxed)
}

// SAFETY: every method forwards to `System` with the caller's own arguments, so `System`'s
// guarantees are passed through unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, which meets `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() && counting() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with this layout.
        unsafe { System.dealloc(ptr, layout) };
        if counting() {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() && counting() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        new
    }
}
