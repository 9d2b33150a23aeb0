//! Proves the approve path allocates nothing: a counting global allocator, armed only on this
//! thread around the calls under test, must see zero allocations for approved checks on a
//! loaded engine (1,000 open orders, 96 intervals), and for the commit of an approval.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if ARMED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: delegates every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, ALLOCATIONS.load(Ordering::SeqCst) - before)
}

#[test]
fn approved_check_and_commit_allocate_nothing() {
    let (mut engine, _ledger) = common::loaded_engine();
    let intents: Vec<_> = (0..96)
        .map(|k| common::approvable(&format!("probe-{k}"), 1 + k))
        .collect();

    let (approved, allocations) = counted(|| {
        intents
            .iter()
            .filter(|r| engine.check(r, common::now()).is_approved())
            .count()
    });
    assert_eq!(approved, intents.len(), "every probe must be approved");
    assert_eq!(allocations, 0, "approved checks allocated");

    let (results, allocations) = counted(|| {
        let mut ok = 0;
        for r in &intents {
            if engine.evaluate(r, common::now()).is_ok() {
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(results, intents.len());
    assert_eq!(
        allocations, 0,
        "evaluate (check + commit) allocated on approval"
    );

    // The counter works: a rejection builds its message on the heap.
    let (rejected, allocations) = counted(|| engine.check(&intents[0], common::now()));
    assert!(!rejected.is_approved());
    assert!(allocations > 0, "the counting allocator saw nothing");
}
