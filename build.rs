//! Builds each BPF program in bpf/ (every `bpf/<name>.bpf.c`) into a
//! skeleton `<name>.skel.rs` in OUT_DIR, and writes `skels.rs` there, one
//! `pub mod <name>` per skeleton, for `src/bpf/skel.rs` to include.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    let mut names: Vec<String> = std::fs::read_dir("bpf")
        .expect("read bpf/")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".bpf.c").map(str::to_string)
        })
        .collect();
    names.sort();
    let mut modules = String::new();
    for name in &names {
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
        let _ = writeln!(
            modules,
            "/// The skeleton of `bpf/{name}.bpf.c`.\npub mod {name} {{\n    \
             include!(concat!(env!(\"OUT_DIR\"), \"/{name}.skel.rs\"));\n}}"
        );
    }
    std::fs::write(out.join("skels.rs"), modules).expect("write skels.rs");
    println!("cargo:rerun-if-changed=bpf");
    for header in std::fs::read_dir("bpf").expect("read bpf/").flatten() {
        let p = header.path();
        if p.extension().is_some_and(|e| e == "h") {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
