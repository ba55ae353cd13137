//! What a forked child must not inherit of the tracers attached to its
//! parent.
//!
//! A tracer attaches uprobes to one process: the kernel writes each probe
//! site's breakpoint into that process's copy of the text page and raises
//! the probe's semaphore there. A forked child inherits both, though no
//! tracer is attached to it: its probes would fire on the parent's counts,
//! at breakpoints the kernel prepared for the parent only. On kernels that
//! optimize uprobes (6.18) such a site is a call into a trampoline that
//! only the parent maps, and the child dies of SIGSEGV; elsewhere the
//! kernel takes the breakpoint out at the first hit. And a tracer that
//! attaches to the child later finds the breakpoint in place, so the
//! kernel does not raise the child's semaphore for it.
//!
//! So, inside fork() (`pthread_atfork` handlers): before it, note each
//! semaphore's count; in the child, before anything else runs, take those
//! counts off (whatever a tracer attached to the child since stays), and
//! drop the child's copies of the text pages that hold probe sites
//! (`MADV_DONTNEED`: they come back from the file, without breakpoints).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{app, probes};

/// The extension's executable mapping, [start, end), found at import.
static TEXT_START: AtomicUsize = AtomicUsize::new(0);
static TEXT_END: AtomicUsize = AtomicUsize::new(0);

/// Registers the handlers; finds the extension's executable mapping.
pub fn install() {
    if let Some((start, end)) = text_of(install as fn() as usize) {
        TEXT_START.store(start, Ordering::Relaxed);
        TEXT_END.store(end, Ordering::Relaxed);
    }
    // SAFETY: registers handlers that only load and store atomics, call
    // madvise, and take a lock only if it is free; called once per process
    // (module import).
    unsafe { libc::pthread_atfork(Some(before_fork), None, Some(in_child)) };
}

/// The executable mapping of this process that holds address `addr`.
fn text_of(addr: usize) -> Option<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next()?, f.next()?);
        let (a, b) = range.split_once('-')?;
        let (a, b) = (
            usize::from_str_radix(a, 16).ok()?,
            usize::from_str_radix(b, 16).ok()?,
        );
        (perms.contains('x') && a <= addr && addr < b).then_some((a, b))
    })
}

/// Drops this process's private copies of the pages [start, end).
pub fn fresh_text(start: usize, end: usize) {
    if start < end {
        // SAFETY: the range is a mapping of this process's own code, which
        // is read back from its file unchanged (a private file mapping
        // keeps nothing else in those pages); one thread runs.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

extern "C" fn before_fork() {
    probes::before_fork();
    app::at_fork(false);
}

extern "C" fn in_child() {
    probes::after_fork_child();
    app::at_fork(true);
    fresh_text(
        TEXT_START.load(Ordering::Relaxed),
        TEXT_END.load(Ordering::Relaxed),
    );
}
