//! The `count-allocs` feature: a global allocator for the `metastore` binary that counts every
//! heap allocation in the process, so the performance suite can read allocations per request off
//! `/metrics` (`metastore_heap_allocations_total`) as the delta over a fixed-count run. Off in
//! the default build: the counter is one relaxed atomic add per allocation, shared by every core,
//! and that cache line would bounce between cores under load.
//!
//! An allocation is a call to `alloc`, `alloc_zeroed` or `realloc` (a realloc may move the
//! block; `alloc_test.rs` counts the same way). Frees are not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting. `main.rs` installs it as the global allocator when the
/// feature is on.
pub struct CountingAlloc;

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged,
// so `System` upholds the GlobalAlloc contract; counting is one relaxed atomic add on a static,
// which neither allocates nor unwinds.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout, which the caller guarantees is non-zero-sized.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by this allocator, i.e. by `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` was returned by `System` with `layout`; the caller guarantees `new_size`
        // is valid for it. Forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made through `CountingAlloc` since the process started.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Appends the counter to a Prometheus text page.
pub fn write_metric(s: &mut String) {
    let name = "metastore_heap_allocations_total";
    let _ = writeln!(
        s,
        "# HELP {name} Heap allocations (alloc, alloc_zeroed, realloc) by the whole process (count-allocs build).\n# TYPE {name} counter\n{name} {}",
        allocations()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocations_not_frees() {
        // In the library's tests CountingAlloc is not the global allocator: only this test moves
        // the counter.
        let before = allocations();
        let layout = Layout::from_size_align(64, 8).expect("valid layout");
        // SAFETY: a non-zero-sized layout; every block is freed with the layout it has.
        unsafe {
            let a = CountingAlloc.alloc(layout);
            assert!(!a.is_null());
            assert_eq!(allocations() - before, 1);
            let z = CountingAlloc.alloc_zeroed(layout);
            assert!(!z.is_null());
            assert!(std::slice::from_raw_parts(z, 64).iter().all(|&b| b == 0));
            assert_eq!(allocations() - before, 2);
            let r = CountingAlloc.realloc(a, layout, 4096);
            assert!(!r.is_null());
            assert_eq!(allocations() - before, 3);
            CountingAlloc.dealloc(r, Layout::from_size_align(4096, 8).expect("valid layout"));
            CountingAlloc.dealloc(z, layout);
        }
        assert_eq!(allocations() - before, 3, "frees are not counted");
        let mut page = String::new();
        write_metric(&mut page);
        assert!(page.contains("# TYPE metastore_heap_allocations_total counter\n"), "{page}");
        let value: u64 = page
            .lines()
            .find_map(|l| l.strip_prefix("metastore_heap_allocations_total "))
            .and_then(|v| v.parse().ok())
            .expect("a sample line");
        assert!(value >= before + 3, "{page}");
    }
}
