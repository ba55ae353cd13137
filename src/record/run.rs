//! `pyusdt-prof record`: a process by pid, or a program launched to be
//! recorded from its first line; progress on a terminal; the profile
//! written, and one summary line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::bpf::kernel;
use crate::profile::Profile;
use crate::record::{record, Options, LOST_KERNEL_STACKS, LOST_NAMES, LOST_STACKS};
use crate::target::launch::Launched;
use crate::target::{self, Target};
use crate::{errors, Result};

/// What `record` is asked to do.
#[derive(Debug, Clone)]
pub struct Run {
    /// The process to record, if not a launched one.
    pub pid: Option<u32>,
    /// The program to launch and record (empty: record `pid`).
    pub command: Vec<String>,
    /// Where to write the profile.
    pub output: PathBuf,
    /// What to record.
    pub opts: Options,
    /// Say which kernel features and program variant were used, and how
    /// long attaching took.
    pub verbose: bool,
}

/// Fails unless a file can be written at `path` (its folder exists and
/// is writable): said before anything is recorded.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Err(e) => bail!("cannot write {}: {}: {e}", path.display(), dir.display()),
        Ok(m) if !m.is_dir() => bail!(
            "cannot write {}: {} is not a directory",
            path.display(),
            dir.display()
        ),
        Ok(_) => {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                .context("an output path with a NUL byte")?;
            // SAFETY: `c` is a valid NUL-terminated path.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
                bail!(
                    "cannot write {}: no permission to write in {}",
                    path.display(),
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

/// The target: the launched program once it has loaded pyusdt, or
/// process `pid`. A launched program that fails is waited for.
fn find(launched: &mut Option<Launched>, pid: Option<u32>, follow: bool) -> Result<Target> {
    let t = match (launched.as_mut(), pid) {
        (Some(l), _) => l.target(follow),
        // Following children, any process may be the root (a shell).
        (None, Some(p)) if follow => target::find_root(p),
        (None, Some(p)) => target::find(p),
        (None, None) => bail!("give a process with -p PID, or a command after --"),
    };
    if t.is_err() {
        if let Some(l) = launched.take() {
            let _ = l.finish();
        }
    }
    t
}

/// Records as `r` says until `stop` is set, the duration runs out or the
/// program exits; writes the profile and says what it holds. Returns the
/// launched program's exit code (0 for `-p`).
pub fn run(r: &Run, stop: &AtomicBool) -> Result<u8> {
    r.opts.check()?;
    errors::check_can_trace()?;
    // Refuse an unwritable output before recording anything.
    check_writable(&r.output)?;
    let mut launched = match r.command.is_empty() {
        true => None,
        false => Some(Launched::start(&r.command, r.opts.subprocesses)?),
    };
    let t = find(&mut launched, r.pid, r.opts.subprocesses)?;
    let tty = std::io::stderr().is_terminal();
    let begun = Instant::now();
    let result = record(
        &t,
        &r.opts,
        stop,
        || {
            if r.verbose {
                let k = kernel::kernel();
                eprintln!(
                    "pyusdt-prof: {k}: {}, loaded and attached in {:.2} s",
                    k.variant(),
                    begun.elapsed().as_secs_f64()
                );
            }
            let names: Vec<&str> = r.opts.views.iter().map(|v| v.name()).collect();
            eprintln!(
                "pyusdt-prof: recording process {} ({}): {}; Ctrl-C to stop",
                t.pid,
                t.comm,
                names.join(", ")
            );
            if let Some(l) = launched.as_mut() {
                l.go();
            }
        },
        |p, _| {
            if tty {
                eprint!("\r\x1b[K{}", p.line());
            }
        },
    );
    if tty {
        eprint!("\r\x1b[K");
    }
    // At the deadline (-d) a launched program that still runs goes on,
    // unrecorded: the profile is written now. Otherwise (it exited, or
    // Ctrl-C, which reaches it too) it is waited for.
    let deadline = r.opts.duration.is_some() && !stop.load(Ordering::Relaxed);
    let mut goes_on = None;
    let code = match launched {
        Some(mut l) => match l.exited()? {
            Some(code) => code,
            None if deadline => {
                goes_on = Some(l.pid());
                0
            }
            None => l.finish()?,
        },
        None => 0,
    };
    let profile = result?;
    profile.write(&r.output)?;
    eprintln!("{}", summary(&profile, &r.output));
    if let Some(pid) = goes_on {
        eprintln!("pyusdt-prof: the program (process {pid}) goes on, unrecorded");
    }
    Ok(code)
}

/// The line that says what a profile written to `output` holds, and what
/// recording it cost this process.
pub fn summary(profile: &Profile, output: &Path) -> String {
    let mut summary = format!(
        "pyusdt-prof: wrote {} ({:.1}s of process {}",
        output.display(),
        profile.duration_ns as f64 / 1e9,
        profile.pid
    );
    if profile.processes.len() > 1 {
        summary.push_str(&format!(" and {} more", profile.processes.len() - 1));
    }
    for v in &profile.views {
        summary.push_str(&format!(", {} {}", v.kind.name(), v.events));
        if let Some(ns) = v.sampled_below_ns {
            summary.push_str(&format!(
                " (waits under {} sampled)",
                crate::readers::report::duration(ns)
            ));
        }
    }
    let lost: u64 = profile.views.iter().map(|v| v.lost).sum();
    summary.push_str(&format!(", lost {lost}"));
    let dropped: u64 = [LOST_STACKS, LOST_NAMES, LOST_KERNEL_STACKS]
        .iter()
        .filter_map(|r| profile.walk_errors.get(*r))
        .sum();
    if dropped > 0 {
        summary.push_str(&format!(
            ", stacks or names dropped {dropped}: see walk_errors"
        ));
    }
    // What recording cost, in this process (the BPF programs' time is the
    // target's, in the kernel).
    // SAFETY: rusage is plain data that getrusage fills.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to fill, for this process only.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        summary.push_str(&format!(
            "; recorder {:.2} s CPU, {:.1} MiB peak",
            secs(ru.ru_utime) + secs(ru.ru_stime),
            ru.ru_maxrss as f64 / 1024.0
        ));
    }
    summary.push(')');
    summary
}
