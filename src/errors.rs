//! Turning an error chain into what a user can act on.

use std::io;

/// A hint for the user, if some error in the chain is one we recognise:
/// missing privileges above all.
pub fn hint(err: &anyhow::Error) -> Option<&'static str> {
    for cause in err.chain() {
        let denied = if let Some(e) = cause.downcast_ref::<io::Error>() {
            e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EPERM)
        } else if let Some(e) = cause.downcast_ref::<libbpf_rs::Error>() {
            e.kind() == libbpf_rs::ErrorKind::PermissionDenied
        } else {
            false
        };
        if denied {
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

    #[test]
    fn names_the_missing_capabilities() {
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_capabilities(1 << CAP_BPF), ["CAP_PERFMON"]);
    }
}
