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
