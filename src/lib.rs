//! pyusdt-prof: a profiler for Python on Linux that puts CPU samples,
//! blocking, syscalls and wake-ups under the same Python frames, per thread.
//!
//! The target runs with `python -m pyusdt app.py` (the `pyusdt` extension in
//! `pyext/`). That extension announces its interpreter's layout through the
//! USDT probe `pyusdt:layout`; [`target`] finds a process's extension,
//! [`layout`] attaches the BPF program in `bpf/layout.bpf.c` to that probe
//! and decodes what it announces. The BPF programs are built by
//! libbpf-cargo from `bpf/` into skeletons, included in [`bpf`].

pub mod bpf;
pub mod errors;
pub mod layout;
pub mod pyname;
pub mod sampler;
pub mod target;

/// The result type of this crate.
pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;
