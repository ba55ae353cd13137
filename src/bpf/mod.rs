//! Loading and attaching the BPF programs: the skeletons libbpf-cargo
//! builds from `bpf/*.bpf.c` ([`skel`]), what the running kernel offers
//! and which variant of each program fits it ([`kernel`]), and the steps
//! every object shares ([`load`]): tp_btf or raw_tp, the maps every view
//! shares with the process table, the CPU sampler's perf events; and
//! moving exited threads' counts out of the maps ([`retire`]).

pub mod kernel;
pub mod load;
pub mod maps;
pub mod retire;
pub mod skel;

pub use skel::*;
