//! pyusdt-prof: a profiler for Python on Linux that puts CPU samples,
//! blocking, syscalls and wake-ups under the same Python frames, per thread.
//!
//! The target runs with `python -m pyusdt app.py` (the `pyusdt` extension in
//! `pyext/`). That extension announces its interpreter's layout through the
//! USDT probe `pyusdt:layout`; [`target`] finds a process's extension and
//! [`layout`] receives the announcement. [`record`] then loads one BPF
//! object per view (built by libbpf-cargo from `bpf/` into the skeletons of
//! [`bpf`]), each of which walks the thread's Python frames when its event
//! fires and counts in kernel maps; at the end it names code objects
//! ([`pyname`]), kernel frames ([`ksym`]) and syscalls ([`syscalls`]) into a
//! [`profile::Profile`], which `fold` and [`flame`] read.

pub mod bpf;
pub mod errors;
pub mod profile;
pub mod readers;
pub mod record;
pub mod target;
pub mod trace;
pub(crate) mod views;

/// The result type of this crate.
pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;
