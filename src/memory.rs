//! Handing memory the process has freed back to the operating system.
//!
//! glibc's malloc keeps freed memory for reuse: in the middle of an arena's heap it is
//! never returned on its own, and a long-running `serve` spreads its allocations over one
//! arena per thread that ever allocated (tokio workers, blocking-pool threads that come and
//! go). Its RSS then creeps up for hours while the live heap stays flat, which looks like a
//! leak and hides a real one. Trimming once a minute keeps RSS close to what is live, so a
//! long run's RSS tells growth from retention (`benches/soak.sh`).

/// Caps glibc's malloc arenas at one per core (unless `MALLOC_ARENA_MAX` says otherwise).
/// glibc gives each new thread an arena of its own, up to eight per core: memory a task
/// frees on another worker goes back to the arena it came from, and long-lived entries
/// (cached logins, the state store's pages) end up scattered over a dozen half-empty heaps
/// that trimming cannot give back. A soak's anonymous memory rose every quarter while the
/// live heap stayed near 3 MB. Called before the runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let arenas = i32::try_from(cores.max(2)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets a malloc parameter; M_ARENA_MAX takes any positive count.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Bytes malloc has handed out and not had back (all arenas, and large blocks it mapped
/// on their own): the live heap, whatever RSS the allocator keeps around it. 0 where the C
/// library is not glibc.
pub(crate) fn heap_in_use() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes the arenas' locks and only reads their counters.
        let info = unsafe { libc::mallinfo2() };
        info.uordblks.saturating_add(info.hblkhd)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

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

    /// The arenas malloc has now (`<heap nr=…>` elements of `malloc_info`).
    fn arenas() -> usize {
        let mut buffer: *mut libc::c_char = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: open_memstream writes the buffer's address and size as the stream is
        // closed; the buffer is malloc'd by it and freed below.
        let xml = unsafe {
            let stream = libc::open_memstream(&mut buffer, &mut size);
            assert!(!stream.is_null(), "open_memstream");
            libc::malloc_info(0, stream);
            libc::fclose(stream);
            let text = std::slice::from_raw_parts(buffer.cast::<u8>(), size).to_vec();
            libc::free(buffer.cast());
            String::from_utf8(text).expect("malloc_info writes XML")
        };
        xml.matches("<heap nr=").count()
    }

    /// Threads that each allocate while all of them are alive, then how many arenas there
    /// are. Run in a process of its own (see below): the test harness's own threads have
    /// arenas already.
    fn arenas_after_many_threads() -> usize {
        const THREADS: usize = 12;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let block = std::hint::black_box(vec![1u8; 256]);
                    barrier.wait();
                    drop(block);
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().expect("thread"));
        arenas()
    }

    const CHILD: &str = "LOCKBOX_ARENA_TEST_CHILD";

    #[test]
    fn arenas_stay_at_one_per_core_however_many_threads_allocate() {
        if let Some(mode) = std::env::var_os(CHILD) {
            // The child: report the count for the parent to judge.
            if mode == "limited" {
                limit_arenas();
            }
            println!("arenas={}", arenas_after_many_threads());
            return;
        }
        let count = |mode: &str| -> usize {
            let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "memory::tests::arenas_stay_at_one_per_core_however_many_threads_allocate",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, mode)
                .env_remove("MALLOC_ARENA_MAX")
                .output()
                .expect("run the test binary");
            let stdout = String::from_utf8_lossy(&out.stdout);
            stdout
                .lines()
                .find_map(|l| {
                    // libtest's own "test … ..." may share the line.
                    let count = l.split("arenas=").nth(1)?;
                    count.split_whitespace().next()?.parse().ok()
                })
                .unwrap_or_else(|| panic!("no count from the child: {stdout}"))
        };
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let limited = count("limited");
        let unlimited = count("default");
        assert!(
            limited <= cores.max(2),
            "{limited} arenas for {cores} cores"
        );
        assert!(
            unlimited > limited,
            "without the cap glibc gave {unlimited} arenas: the test shows nothing"
        );
    }

    #[test]
    fn the_live_heap_counts_what_is_allocated() {
        // Far more than the other tests running meanwhile allocate or free; zeroed, so
        // mapped without being touched.
        const BLOCK: usize = 1 << 30;
        let before = heap_in_use();
        let block = std::hint::black_box(vec![0u8; BLOCK]);
        let during = heap_in_use();
        drop(block);
        assert!(during > before + BLOCK / 2, "{before} → {during} bytes");
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
