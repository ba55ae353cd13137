//! Turning an error chain into what a user can act on: missing
//! privileges, and a BPF program the kernel's verifier rejected (which
//! the kernel reports as EACCES, though it is no permission problem).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use libbpf_rs::PrintLevel;

/// The environment variable that prints libbpf's messages, the verifier's
/// logs among them, as they come.
pub const BPF_LOG_ENV: &str = "PYUSDT_PROF_BPF_LOG";

/// libbpf's messages, kept so that a failed load can say why; bounded.
static LIBBPF_LOG: Mutex<String> = Mutex::new(String::new());
/// Bytes of [`LIBBPF_LOG`] dropped from its front so far.
static LOG_DROPPED: Mutex<usize> = Mutex::new(0);
static ECHO: AtomicBool = AtomicBool::new(false);
const LOG_CAP: usize = 4 << 20;

fn keep_libbpf_message(_level: PrintLevel, msg: String) {
    if ECHO.load(Ordering::Relaxed) {
        eprint!("{msg}");
    }
    let mut log = LIBBPF_LOG.lock().unwrap_or_else(|p| p.into_inner());
    if log.len() + msg.len() > LOG_CAP {
        let cut = log.len() / 2;
        let cut = (cut..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        log.drain(..cut);
        *LOG_DROPPED.lock().unwrap_or_else(|p| p.into_inner()) += cut;
    }
    log.push_str(&msg);
}

/// Keeps libbpf's messages instead of printing them (they are printed as
/// they come once `verbose` or PYUSDT_PROF_BPF_LOG=1): a load that fails
/// reads its reason back from them.
pub fn capture_libbpf_log(verbose: bool) {
    let echo = verbose || std::env::var_os(BPF_LOG_ENV).is_some_and(|v| v != "0");
    if echo {
        ECHO.store(true, Ordering::Relaxed);
    }
    libbpf_rs::set_print(Some((PrintLevel::Debug, keep_libbpf_message)));
}

/// Where libbpf's kept messages end now (counting what was dropped).
fn log_mark() -> usize {
    let log = LIBBPF_LOG.lock().unwrap_or_else(|p| p.into_inner());
    let dropped = *LOG_DROPPED.lock().unwrap_or_else(|p| p.into_inner());
    dropped + log.len()
}

/// libbpf's messages since `mark`.
fn log_since(mark: usize) -> String {
    let log = LIBBPF_LOG.lock().unwrap_or_else(|p| p.into_inner());
    let dropped = *LOG_DROPPED.lock().unwrap_or_else(|p| p.into_inner());
    let from = mark.saturating_sub(dropped).min(log.len());
    let from = (from..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(log.len());
    log[from..].to_string()
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown)".to_string())
}

/// The last `n` of `lines`, trimmed, that are neither empty nor `noise`.
fn last_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
    n: usize,
    noise: impl Fn(&str) -> bool,
) -> Vec<&'a str> {
    let kept: Vec<&str> = lines
        .map(str::trim)
        .filter(|l| !l.is_empty() && !noise(l))
        .collect();
    kept[kept.len().saturating_sub(n)..].to_vec()
}

/// A BPF program that the kernel's verifier refused to load.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejected {
    /// The program's name (its C function).
    pub program: String,
    /// Its source file, `bpf/NAME.bpf.c`.
    pub source: String,
    /// The verifier's last meaningful lines: its reason.
    pub reason: Vec<String>,
    /// The kernel that rejected it.
    pub kernel: String,
    /// The verifier's whole log.
    pub log: String,
}

impl Rejected {
    /// The rejection libbpf's messages `log` describe, if any.
    pub fn parse(log: &str, kernel: &str) -> Option<Rejected> {
        let quoted = |line: &str, before: &str| -> Option<String> {
            let rest = &line[line.find(before)? + before.len()..];
            Some(rest[..rest.find('\'')?].to_string())
        };
        let mut program = None;
        let mut object = None;
        let mut block: Option<Vec<&str>> = None;
        let mut verifier = Vec::new();
        for line in log.lines() {
            if let Some(b) = block.as_mut() {
                if line.contains("-- END PROG LOAD LOG --") {
                    verifier = block.take().unwrap_or_default();
                } else {
                    b.push(line);
                }
                continue;
            }
            if line.contains("-- BEGIN PROG LOAD LOG --") {
                program = quoted(line, "prog '");
                block = Some(Vec::new());
            } else if line.contains("failed to load object '") {
                object = quoted(line, "failed to load object '");
            }
        }
        let program = program?;
        let source = match object {
            Some(o) => format!("bpf/{}.bpf.c", o.strip_suffix("_bpf").unwrap_or(&o)),
            None => "bpf/".to_string(),
        };
        const NOISE: [&str; 5] = [
            "processed ",
            "verification time",
            "stack depth",
            "Validating ",
            "func#",
        ];
        let reason = last_lines(verifier.iter().copied(), 3, |l| {
            NOISE.iter().any(|n| l.starts_with(n))
        })
        .into_iter()
        .map(str::to_string)
        .collect();
        Some(Rejected {
            program,
            source,
            reason,
            kernel: kernel.to_string(),
            log: verifier.join("\n"),
        })
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the kernel's BPF verifier rejected program {} ({}) on Linux {}: {} \
             (not a permission problem; the whole verifier log: -v or {}=1)",
            self.program,
            self.source,
            self.kernel,
            if self.reason.is_empty() {
                "it gave no reason".to_string()
            } else {
                self.reason.join(" / ")
            },
            BPF_LOG_ENV
        )
    }
}

impl std::error::Error for Rejected {}

/// Runs a libbpf load and, when it fails, says why as the kernel and
/// libbpf told it: a verifier rejection as [`Rejected`], any other failure
/// with libbpf's last messages. `what` names the step ("load the CPU
/// sampler").
pub fn loaded<T>(
    what: &str,
    load: impl FnOnce() -> std::result::Result<T, libbpf_rs::Error>,
) -> crate::Result<T> {
    let mark = log_mark();
    match load() {
        Ok(t) => Ok(t),
        Err(e) => {
            let log = log_since(mark);
            if let Some(r) = Rejected::parse(&log, &kernel_release()) {
                return Err(anyhow::Error::new(r).context(what.to_string()));
            }
            let last = last_lines(log.lines(), 2, |l| {
                l.contains("failed to load object") || l.contains("failed to load BPF skeleton")
            })
            .join(" / ");
            let err = anyhow::Error::new(e);
            Err(if last.is_empty() {
                err.context(what.to_string())
            } else {
                err.context(format!("{what} (libbpf: {last})"))
            })
        }
    }
}

/// A hint for the user, if some error in the chain is one we recognise:
/// missing privileges above all.
pub fn hint(err: &anyhow::Error) -> Option<&'static str> {
    // A verifier rejection comes as EACCES, and is no permission problem.
    if err.chain().any(|c| c.is::<Rejected>()) {
        return None;
    }
    for cause in err.chain() {
        let denied = if let Some(e) = cause.downcast_ref::<io::Error>() {
            e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EPERM)
        } else if let Some(e) = cause.downcast_ref::<libbpf_rs::Error>() {
            e.kind() == libbpf_rs::ErrorKind::PermissionDenied
        } else {
            false
        };
        if denied {
            if lockdown().as_deref() == Some("confidentiality") {
                return Some(
                    "the kernel is locked down (confidentiality, \
                     /sys/kernel/security/lockdown), which forbids BPF programs to read \
                     memory: boot without lockdown=confidentiality (Secure Boot may turn it on)",
                );
            }
            // SAFETY: geteuid cannot fail.
            if unsafe { libc::geteuid() } == 0 {
                return Some(
                    "permission was denied even to root: the process may belong to another \
                     user namespace, or a security module (Yama, SELinux, AppArmor) forbids \
                     tracing it",
                );
            }
            return Some(
                "pyusdt-prof loads BPF programs: run it as root (sudo), or give it \
                 CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE \
                 (sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep $(which pyusdt-prof))",
            );
        }
    }
    None
}

/// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`), if
/// it has the lockdown security module.
pub fn lockdown() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    let mode = text.split('[').nth(1)?.split(']').next()?;
    Some(mode.to_string())
}

/// Linux capability numbers this tool needs (`linux/capability.h`).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capabilities of this process, from /proc/self/status.
pub fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The capabilities that loading and attaching the BPF programs needs and
/// this process lacks (CAP_SYS_ADMIN stands in for both).
pub fn missing_capabilities(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Fails with what to do when this process cannot load BPF programs, or
/// when the kernel lacks what the CO-RE programs need.
pub fn check_can_trace() -> crate::Result<()> {
    capture_libbpf_log(false);
    if let Some(caps) = effective_caps() {
        let missing = missing_capabilities(caps);
        if !missing.is_empty() {
            anyhow::bail!(
                "pyusdt-prof loads BPF programs and lacks {}: run it as root \
                 (sudo pyusdt-prof ...), or grant them once with \
                 `sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep \"$(command -v pyusdt-prof)\"`",
                missing.join(" and ")
            );
        }
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        anyhow::bail!(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux): pyusdt-prof's CO-RE BPF \
             programs need a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions' \
             kernels since 2020 are)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG_544: &str = "libbpf: prog 'on_calls': BPF program load failed: -EACCES
libbpf: prog 'on_calls': -- BEGIN PROG LOAD LOG --
combined stack size of 2 calls is 544. Too large
processed 26803 insns (limit 1000000) max_states_per_insn 14 total_states 1500 peak_states 830 mark_read 0
-- END PROG LOAD LOG --
libbpf: prog 'on_calls': failed to load: -EACCES
libbpf: failed to load object 'calls_bpf'
libbpf: failed to load BPF skeleton 'calls_bpf': -EACCES
";

    #[test]
    fn a_verifier_rejection_names_program_source_reason_and_kernel() {
        let r = Rejected::parse(LOG_544, "6.1.0-50-amd64").expect("a rejection");
        assert_eq!(r.program, "on_calls");
        assert_eq!(r.source, "bpf/calls.bpf.c");
        assert_eq!(
            r.reason,
            ["combined stack size of 2 calls is 544. Too large"]
        );
        let text = r.to_string();
        assert!(text.starts_with(
            "the kernel's BPF verifier rejected program on_calls (bpf/calls.bpf.c) on Linux \
             6.1.0-50-amd64: combined stack size of 2 calls is 544. Too large"
        ));
        // No permission hint for it.
        let e = anyhow::Error::new(r).context("load the call tracer");
        assert_eq!(hint(&e), None);
    }

    #[test]
    fn no_rejection_without_a_verifier_log() {
        assert_eq!(
            Rejected::parse("libbpf: failed to find BTF for extern 'x'\n", "6.1"),
            None
        );
    }

    #[test]
    fn names_the_missing_capabilities() {
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_capabilities(1 << CAP_BPF), ["CAP_PERFMON"]);
    }
}
