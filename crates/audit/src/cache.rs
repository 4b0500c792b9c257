//! Asking the CPU for memory before it is used.
//!
//! The writer's state is one for every session, and the gateway's
//! sessions run on more than one core: the write before this one often
//! ran on the other core, and the lines it wrote are in that core's
//! cache. Met one by one as a write goes, each of them stalls it for a
//! transfer between the cores; asked for together when the write begins,
//! they travel at once.
//!
//! ```
//! use portcullis_audit::cache::{prefetch_for_write, prefetch_value};
//!
//! let state = [0u64; 32];
//! prefetch_value(&state);
//! // Only a hint: nothing is read or written, whatever the address.
//! prefetch_for_write(std::ptr::null(), 4096);
//! ```
#![allow(unsafe_code, reason = "the CPU's prefetch instruction is reached only through an intrinsic")]

/// The size of a cache line on the CPUs the gateway runs on.
pub const LINE: usize = 64;

/// The most bytes one call asks for (more would push out what the
/// write itself needs).
pub const MAX_BYTES: usize = 4096;

/// Asks for the cache lines of `len` bytes from `ptr` (at most
/// [`MAX_BYTES`]), to be written. Only a hint: it reads and writes
/// nothing and never faults, whatever the address; on other CPUs than
/// x86-64 it does nothing.
#[inline]
pub fn prefetch_for_write(ptr: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let first = ptr.addr() & !(LINE - 1);
        let lines = (ptr.addr() - first + len.min(MAX_BYTES)).div_ceil(LINE);
        for i in 0..lines {
            let at = ptr.wrapping_sub(ptr.addr() - first).wrapping_add(i * LINE);
            // SAFETY: a prefetch reads and writes no memory and never
            // faults, whatever the address; `sse` is part of every
            // x86-64 target.
            unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_ET0 }>(at.cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ptr, len);
    }
}

/// [`prefetch_for_write`] of a value's own bytes (not what it points to).
#[inline]
pub fn prefetch_value<T>(value: &T) {
    prefetch_for_write(std::ptr::from_ref(value).cast(), std::mem::size_of::<T>());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_address_is_only_a_hint() {
        // Unmapped, at the very end of the address space, and unaligned:
        // none of them faults.
        for addr in [0usize, 1, 4096 + 13, usize::MAX - 10, usize::MAX] {
            prefetch_for_write(std::ptr::without_provenance(addr), MAX_BYTES);
        }
        prefetch_for_write(std::ptr::null(), usize::MAX);
        let mut value = [7u8; 300];
        prefetch_value(&value);
        value[299] = 8;
        assert_eq!(value[299], 8);
    }
}
