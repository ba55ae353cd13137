//! Builds each BPF program in bpf/ into a skeleton in OUT_DIR.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// Every `bpf/<name>.bpf.c`; each becomes `<name>.skel.rs`.
const PROGRAMS: &[&str] = &[
    "layout", "procs", "cpu", "sched", "syscall", "gil", "calls", "span", "trace", "floor",
];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    for name in PROGRAMS {
        let src = format!("bpf/{name}.bpf.c");
        SkeletonBuilder::new()
            .source(&src)
            .clang_args([
                "-Wall",
                "-I",
                "bpf",
                // usdt.bpf.h includes <sys/sdt.h>-free system headers that
                // live under the multiarch directory.
                "-I",
                &format!("/usr/include/{arch}-linux-gnu"),
            ])
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| panic!("build {src}: {e:#}"));
        println!("cargo:rerun-if-changed={src}");
    }
    for header in std::fs::read_dir("bpf").expect("read bpf/").flatten() {
        let p = header.path();
        if p.extension().is_some_and(|e| e == "h") {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
