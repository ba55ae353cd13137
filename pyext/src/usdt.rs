//! USDT probes in the SystemTap SDT format, written with inline assembly.
//!
//! Each probe site is a `nop` plus an ELF note in `.note.stapsdt` naming the
//! provider, the probe, the address of its semaphore and where each
//! argument lives (`8@%rdi`). Tracers (bpftrace, libbpf, bcc, perf) find the
//! note, put a uprobe on the `nop`, and count themselves into the
//! semaphore, a `u16` in the `.probes` section. The probe site runs only
//! while that count is non-zero, so an idle probe costs one load and one
//! branch.

/// The instruction at a probe site, labelled 990: a 5-byte nop (`nopl
/// 0(%rax,%rax,1)`), which the kernel's optimized uprobes (6.18+) turn
/// into a call instead of a trap; with feature `trap-nop`, the 1-byte
/// `nop` of `<sys/sdt.h>`.
#[cfg(not(feature = "trap-nop"))]
macro_rules! probe_nop {
    () => {
        "990: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00"
    };
}
#[cfg(feature = "trap-nop")]
macro_rules! probe_nop {
    () => {
        "990: nop"
    };
}
pub(crate) use probe_nop;

/// Declares a probe's semaphore: a `u16` in `.probes` that tracers count
/// themselves into while they are attached.
macro_rules! semaphore {
    ($name:ident) => {
        #[link_section = ".probes"]
        #[used]
        pub static $name: ::core::sync::atomic::AtomicU16 = ::core::sync::atomic::AtomicU16::new(0);
    };
}
pub(crate) use semaphore;

/// Fires probe `pyusdt:$name` if its semaphore `$sem` is non-zero.
///
/// Each argument is `ident: "SIZE" = value` where SIZE is the SDT size
/// (`8` for a pointer or unsigned 64-bit value, `-8` for a signed one) and
/// value is a `u64`-sized integer.
macro_rules! fire {
    ($sem:path, $name:literal, $a0:ident : $s0:literal = $v0:expr $(, $a:ident : $s:literal = $v:expr)* $(,)?) => {
        if $sem.load(::core::sync::atomic::Ordering::Relaxed) != 0 {
            // SAFETY: the assembly is a nop; the rest are assembler
            // directives that emit the probe's note. It reads and writes
            // nothing, but a tracer reads what the arguments point to,
            // so memory is not declared untouched.
            unsafe {
                ::core::arch::asm!(
                    ".ifndef _.stapsdt.base",
                    ".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat",
                    ".weak _.stapsdt.base",
                    ".hidden _.stapsdt.base",
                    "_.stapsdt.base: .space 1",
                    ".size _.stapsdt.base, 1",
                    ".popsection",
                    ".endif",
                    $crate::usdt::probe_nop!(),
                    ".pushsection .note.stapsdt,\"\",\"note\"",
                    ".balign 4",
                    ".4byte 992f-991f, 994f-993f, 3",
                    "991: .asciz \"stapsdt\"",
                    "992: .balign 4",
                    "993: .8byte 990b",
                    ".8byte _.stapsdt.base",
                    ".8byte {sem}",
                    ".asciz \"pyusdt\"",
                    concat!(".asciz \"", $name, "\""),
                    concat!(".asciz \"", $s0, "@{", stringify!($a0), "}" $(, " ", $s, "@{", stringify!($a), "}")*, "\""),
                    "994: .balign 4",
                    ".popsection",
                    sem = sym $sem,
                    $a0 = in(reg) ($v0) as u64,
                    $($a = in(reg) ($v) as u64,)*
                    options(att_syntax, nostack, preserves_flags),
                );
            }
        }
    };
}
pub(crate) use fire;
