//! Builds each BPF program in bpf/ (every `bpf/<name>.bpf.c`) into a
//! skeleton `<name>.skel.rs` in OUT_DIR, and writes `skels.rs` there, one
//! `pub mod <name>` per skeleton, for `src/bpf/skel.rs` to include.
//!
//! Each object's programs are checked against the classic verifier's
//! limit of 512 bytes of stack for a program and all it calls: some
//! kernels allow more (6.13+ may give tracing programs a private stack),
//! and a program that fits only there loads on the machine it was built on
//! and is rejected on others.

use std::collections::HashMap;
use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
        let obj = out.join(format!("{name}.bpf.o"));
        SkeletonBuilder::new()
            .source(&src)
            .obj(&obj)
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
        for (prog, bytes, chain) in stack_use(&obj) {
            if env::var_os("PYUSDT_BPF_STACKS").is_some() {
                println!("cargo:warning={name}: {prog} {bytes} ({chain})");
            }
            assert!(
                bytes <= MAX_BPF_STACK,
                "{src}: program {prog} uses {bytes} bytes of stack with what it calls \
                 ({chain}), over the {MAX_BPF_STACK} the verifier of most kernels allows: \
                 move large locals to a per-CPU scratch map"
            );
        }
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

/// The stack a BPF program and all it calls may use (the classic
/// verifier's MAX_BPF_STACK).
const MAX_BPF_STACK: u64 = 512;

/// A function of a BPF object: its section, its offset there, its size.
struct Func {
    name: String,
    section: usize,
    start: u64,
    size: u64,
}

fn u16_at(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[o], b[o + 1]]))
}
fn u32_at(b: &[u8], o: usize) -> u64 {
    le(&b[o..o + 4])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    le(&b[o..o + 8])
}
/// A little-endian number of `b`'s bytes.
fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x))
}

/// Every program of the BPF object at `path` (a function outside .text),
/// with the most stack it may use with what it calls, as the verifier
/// counts it (each function's frame rounded up to 32 bytes), and that
/// chain of calls. Read from the ELF: a frame is the deepest offset below
/// r10 a function touches; a call is a BPF-to-BPF call or a callback
/// handed to a helper (bpf_loop), both counted on top of the caller.
fn stack_use(path: &Path) -> Vec<(String, u64, String)> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let (shoff, shentsize, shnum) = (
        u64_at(&b, 0x28) as usize,
        u16_at(&b, 0x3a) as usize,
        u16_at(&b, 0x3c) as usize,
    );
    let sh = |i: usize| shoff + i * shentsize;
    let sections: Vec<(u64, u64, u64, u64)> = (0..shnum)
        .map(|i| {
            let h = sh(i);
            // type, offset, size, info (the section a REL section is for)
            (
                u32_at(&b, h + 4),
                u64_at(&b, h + 24),
                u64_at(&b, h + 32),
                u32_at(&b, h + 44),
            )
        })
        .collect();
    let code_section = |i: usize| i < shnum && u64_at(&b, sh(i) + 8) & 4 != 0;
    let Some(symtab) = (0..shnum).find(|&i| sections[i].0 == 2) else {
        return Vec::new();
    };
    let strtab = sections[u32_at(&b, sh(symtab) + 40) as usize].1 as usize;
    let name_at = |o: usize| {
        let s = &b[strtab + o..];
        String::from_utf8_lossy(&s[..s.iter().position(|&c| c == 0).unwrap_or(0)]).into_owned()
    };
    // (name, type, section, value, size) of each symbol
    let syms: Vec<(String, u8, usize, u64, u64)> = (0..sections[symtab].2 as usize / 24)
        .map(|k| {
            let o = sections[symtab].1 as usize + k * 24;
            (
                name_at(u32_at(&b, o) as usize),
                b[o + 4] & 0xf,
                u16_at(&b, o + 6) as usize,
                u64_at(&b, o + 8),
                u64_at(&b, o + 16),
            )
        })
        .collect();
    let funcs: Vec<Func> = syms
        .iter()
        .filter(|s| s.1 == 2 && s.2 > 0 && s.2 < shnum)
        .map(|s| Func {
            name: s.0.clone(),
            section: s.2,
            start: s.3,
            size: s.4,
        })
        .collect();
    let func_at = |section: usize, off: u64| {
        funcs
            .iter()
            .position(|f| f.section == section && off >= f.start && off < f.start + f.size)
    };
    // Relocations: (section, offset of the insn) -> the symbol.
    let mut relocs = HashMap::new();
    for s in sections.iter().filter(|s| s.0 == 9) {
        for k in 0..s.2 as usize / 16 {
            let o = s.1 as usize + k * 16;
            relocs.insert(
                (s.3 as usize, u64_at(&b, o)),
                (u64_at(&b, o + 8) >> 32) as usize,
            );
        }
    }
    let mut frame = vec![0u64; funcs.len()];
    let mut calls: Vec<Vec<usize>> = vec![Vec::new(); funcs.len()];
    for (fi, f) in funcs.iter().enumerate() {
        let base = sections[f.section].1 as usize;
        let mut from_fp = [false; 11];
        for n in 0..(f.size / 8) {
            let off = f.start + n * 8;
            let o = base + off as usize;
            let (code, regs) = (b[o], b[o + 1]);
            let (dst, src) = ((regs & 0xf) as usize, (regs >> 4) as usize);
            let disp = i16::from_le_bytes([b[o + 2], b[o + 3]]);
            let imm = le(&b[o + 4..o + 8]) as u32 as i32;
            let class = code & 7;
            // Loads and stores at r10 - N.
            let mem = matches!(class, 1..=3) && (dst == 10 || src == 10);
            if mem && disp < 0 {
                frame[fi] = frame[fi].max(u64::from(disp.unsigned_abs()));
            }
            // rX = r10, then rX += -N: a pointer into the frame.
            if code == 0xbf && dst < 11 {
                from_fp[dst] = src == 10;
                continue;
            }
            if code == 0x07 && dst < 11 && from_fp[dst] && imm < 0 {
                frame[fi] = frame[fi].max(u64::from(imm.unsigned_abs()));
            }
            if dst < 11 && matches!(class, 4 | 7) {
                from_fp[dst] = false;
            }
            // BPF-to-BPF calls, and functions loaded as values (callbacks,
            // a relocated 64-bit load of an address in code).
            let reloc = relocs.get(&(f.section, off)).map(|&s| &syms[s]);
            let target = if code == 0x85 && src == 1 {
                match reloc {
                    Some(s) if s.1 == 2 => func_at(s.2, s.3),
                    Some(s) => func_at(s.2, s.3 + ((i64::from(imm) + 1) * 8) as u64),
                    None => func_at(f.section, (off as i64 + (i64::from(imm) + 1) * 8) as u64),
                }
            } else if code == 0x18 {
                match reloc {
                    Some(s) if code_section(s.2) && s.1 == 2 => func_at(s.2, s.3),
                    Some(s) if code_section(s.2) => func_at(s.2, s.3 + imm as u64),
                    _ => None,
                }
            } else {
                None
            };
            if let Some(t) = target {
                calls[fi].push(t);
            }
        }
    }
    fn deepest(
        f: usize,
        frame: &[u64],
        calls: &[Vec<usize>],
        seen: &mut Vec<usize>,
    ) -> (u64, Vec<usize>) {
        let own = frame[f].max(1).div_ceil(32) * 32;
        seen.push(f);
        let mut best = (0, Vec::new());
        for &c in &calls[f] {
            if seen.contains(&c) {
                continue;
            }
            let d = deepest(c, frame, calls, seen);
            if d.0 > best.0 {
                best = d;
            }
        }
        seen.pop();
        best.1.insert(0, f);
        (own + best.0, best.1)
    }
    let shstrtab = sections[u16_at(&b, 0x3e) as usize].1 as usize;
    let text = |f: &Func| {
        let name = &b[shstrtab + u32_at(&b, sh(f.section)) as usize..];
        name.starts_with(b".text\0")
    };
    funcs
        .iter()
        .enumerate()
        .filter(|(_, f)| !text(f))
        .map(|(i, f)| {
            let (bytes, chain) = deepest(i, &frame, &calls, &mut Vec::new());
            let names: Vec<String> = chain
                .iter()
                .map(|&c| format!("{} {}", funcs[c].name, frame[c]))
                .collect();
            (f.name.clone(), bytes, names.join(" -> "))
        })
        .collect()
}
