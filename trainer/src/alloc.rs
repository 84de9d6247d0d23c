//! The trainer's allocator: mimalloc, told to keep freed memory a while.
//!
//! A training step allocates and frees buffers of megabytes (the coupling
//! stacks' tapes and per-group gradients, burn's activations). glibc's
//! malloc gives blocks that large back to the OS on free, so every step
//! paid page faults on fresh pages and, with threads, TLB flushes on every
//! core; mimalloc by default gives them back 10 ms after they are freed,
//! also within a step. Kept for a second, they are reused by the next step
//! and still returned when training pauses. Measured on the bench config
//! (README, "Benchmarks"): glibc 155, mimalloc 158, mimalloc keeping freed
//! memory 176 images/s; peak memory 597 against 534 MB with glibc.

use std::ffi::c_long;

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// mimalloc v3's `mi_option_purge_delay` (`mimalloc.h`, `mi_option_e`):
/// milliseconds freed memory waits before it goes back to the OS. The
/// bindings have no name for it; `libmimalloc-sys` is pinned.
const PURGE_DELAY: mi_option_t = 15;
/// Its documented default, checked before changing it (a different value
/// would mean the index names another option in this mimalloc).
const DEFAULT_PURGE_DELAY_MS: c_long = 10;
const KEEP_MS: c_long = 1000;

/// Keeps freed memory for [`KEEP_MS`] before mimalloc returns it to the OS.
pub fn keep_freed_memory() {
    // SAFETY: mimalloc's option getters and setters are plain reads and
    // writes of its option table, callable from any thread at any time.
    unsafe {
        if mi_option_get(PURGE_DELAY) == DEFAULT_PURGE_DELAY_MS {
            mi_option_set(PURGE_DELAY, KEEP_MS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pinned mimalloc still has the purge delay at [`PURGE_DELAY`]
    /// with its default value, so the setting takes.
    #[test]
    fn the_purge_delay_is_where_it_is_expected_and_takes_the_setting() {
        // SAFETY: as in `keep_freed_memory`.
        let before = unsafe { mi_option_get(PURGE_DELAY) };
        assert!(before == DEFAULT_PURGE_DELAY_MS || before == KEEP_MS, "option {PURGE_DELAY} is {before}");
        keep_freed_memory();
        // SAFETY: as in `keep_freed_memory`.
        assert_eq!(unsafe { mi_option_get(PURGE_DELAY) }, KEEP_MS);
    }
}
