//! Process-wide memory settings of the binaries.

/// Turns transparent huge pages off for this process, unless the environment asks for
/// them (`MIMALLOC_ALLOW_THP=1`). Returns whether they were turned off.
///
/// mimalloc, the binaries' allocator, marks its arenas for huge pages (`MADV_HUGEPAGE`),
/// so on a kernel with THP in `madvise` or `always` mode the resident set grows in 2 MiB
/// steps, each as soon as one byte of it is touched. With the generate source into NATS
/// the peak was 43–51 MiB with huge pages and 24–25 MiB without, at the same throughput
/// (docs/benchmarks.md). Call this first thing in `main`: it applies to every mapping of
/// the process, including the ones made before it.
pub fn disable_transparent_huge_pages() -> bool {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some_and(|v| v != "0") {
        return false;
    }
    disable_thp()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn disable_thp() -> bool {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag on this
    // process's memory map; no pointer is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn disable_thp() -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The flag is set on the process (read back with PR_GET_THP_DISABLE).
    #[test]
    #[allow(unsafe_code)]
    fn the_flag_is_set() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some_and(|v| v != "0") {
            assert!(!super::disable_transparent_huge_pages());
            return;
        }
        assert!(super::disable_transparent_huge_pages());
        // SAFETY: as above, integers only.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
