//! A cache prefetch hint: the one place the crate allows `unsafe`.
//!
//! At a million sessions a record's index entry, session and session id are cache misses. A
//! plain load of them a few records ahead stalls retirement as soon as it is the oldest
//! instruction, so it overlaps only part of the miss; PREFETCHT0 is a hint that retires at
//! once and lets the loop run on while the line arrives (benchmarks/RESULTS.md, session 28).

const LINE: usize = 64;

/// Starts loading the cache line holding `value` (and, for a value that spans two lines, the
/// line of its last byte), without waiting for it.
#[inline]
pub fn read<T>(value: &T) {
    let first = std::ptr::from_ref(value).cast::<i8>();
    line(first);
    let last = first.wrapping_add(std::mem::size_of::<T>().saturating_sub(1));
    if last.addr() / LINE != first.addr() / LINE {
        line(last);
    }
}

#[inline]
#[allow(unsafe_code)]
fn line(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint. It never faults, whatever the address, and changes
    // nothing the program can observe but timing; `p` is the first or the last byte of a
    // live reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
