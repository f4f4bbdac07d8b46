//! Handing memory the process has freed back to the operating system.
//!
//! glibc's malloc keeps freed memory for reuse: in the middle of an arena's heap it is
//! never returned on its own, and a long-running `serve` spreads its allocations over one
//! arena per thread that ever allocated (tokio workers, blocking-pool threads that come and
//! go). Its RSS then creeps up for hours while the live heap stays flat, which looks like a
//! leak and hides a real one. Trimming once a minute keeps RSS close to what is live, so a
//! long run's RSS tells growth from retention (`benches/soak.sh`).

/// Returns the free memory of every malloc arena to the OS (glibc's `malloc_trim`); a no-op
/// where the C library is not glibc. True when some memory was released.
pub(crate) fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the arenas' own locks and only releases free chunks;
        // `0` keeps no padding at the top of the main heap.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident pages of this process, in bytes.
    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("resident pages in statm");
        // SAFETY: sysconf only reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        pages * usize::try_from(page).expect("a page size")
    }

    #[test]
    fn memory_freed_inside_the_heap_goes_back_to_the_os() {
        const BLOCKS: usize = 96 * 1024;
        const BLOCK: usize = 1024; // well under the mmap threshold: from the heap
        let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8; BLOCK]).collect();
        // The last block stays: the freed memory is below it, where free() never trims.
        let keep = blocks.pop();
        let before_free = resident_bytes();
        drop(blocks);
        let after_free = resident_bytes();
        assert!(release_free_memory(), "malloc_trim released nothing");
        let after_trim = resident_bytes();
        let freed = BLOCKS * BLOCK;
        assert!(
            after_free + freed / 2 > before_free,
            "free() alone gave the memory back ({before_free} → {after_free} bytes): nothing to trim"
        );
        assert!(
            after_trim + freed / 2 < after_free,
            "trimming kept the freed {freed} bytes resident ({after_free} → {after_trim} bytes)"
        );
        drop(keep);
    }
}
