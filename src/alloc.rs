//! The process's memory hygiene: glibc's allocator gives every thread that allocates an arena
//! of its own and keeps freed memory in it, so the blocking threads that scan thousands of PCI
//! functions would each leave megabytes behind. The agent uses one arena and hands freed pages
//! back after each scan, so its resident memory is what it holds. With other C libraries both
//! calls do nothing.

/// One allocator arena for the whole process. Call before starting threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

/// Returns freed heap pages to the kernel (after a scan's temporaries are dropped).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
