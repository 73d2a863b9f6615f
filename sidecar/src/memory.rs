//! Resident memory of the process (one sidecar per pod: its idle and peak RSS are
//! multiplied by every pod). glibc's allocator is kept (no allocator of our own to
//! audit); two of its knobs bound what it holds (ADR 0014).

/// At start-up, before any thread: at most two malloc arenas. glibc's default (eight
/// per core) gives each busy thread its own arena, and each keeps its freed memory:
/// under load that was ~15 MiB more RSS for no measurable speed.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets an allocator parameter; called before threads start.
        #[expect(unsafe_code, reason = "mallopt has no safe wrapper")]
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        if ok != 1 {
            tracing::debug!("mallopt(M_ARENA_MAX) refused; glibc's default arenas kept");
        }
    }
}

/// At start-up: the process is not dumpable. Another process of the pod, even under the
/// sidecar's uid, then cannot ptrace it or take its sockets with `pidfd_getfd` without
/// `CAP_SYS_PTRACE` — a connected pool socket carries the sidecar's egress rights
/// (docs/egress.md) — and no core dump (which would hold prompts) is written.
pub fn not_dumpable() {
    // SAFETY: PR_SET_DUMPABLE takes an integer and reads no memory of ours.
    #[expect(unsafe_code, reason = "prctl has no safe wrapper")]
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot mark the sidecar not dumpable");
    }
}

/// After a policy is compiled: compiling DLP patterns (Hyperscan) allocates ~8 MiB
/// that is freed at once but stays in the heap (below live blocks, where the heap top
/// cannot shrink); this returns those pages to the kernel.
pub fn give_back() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only releases free heap pages; safe from any thread.
        #[expect(unsafe_code, reason = "malloc_trim has no safe wrapper")]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Every 30 s, what freed connections' and bodies' buffers left in the heap goes back
/// (4,000 closed connections otherwise kept ~190 MiB resident).
pub fn give_back_periodically() {
    let spawned = std::thread::Builder::new()
        .name("vigie-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(30));
                give_back();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "memory trimming thread not started");
    }
}
