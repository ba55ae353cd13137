//! A small ELF shared object that carries app-defined USDT probes, built at
//! run time (the way libstapsdt does it, without libelf).
//!
//! The object has one function per probe, `nop; ret`, whose `nop` (a
//! 5-byte `nopl 0(%rax,%rax,1)`, which the kernel's optimized uprobes turn
//! into a call instead of a trap, as at pyusdt's own probe sites) is the
//! probe site; one `.note.stapsdt` note per probe; a `.stapsdt.base` byte;
//! and one `u16` semaphore per probe in a writable `.probes` section. It is
//! loaded with `dlopen`, so tracers find it by path in `/proc/PID/maps` and
//! read it like any library built with `sys/sdt.h`.
//!
//! Layout (every address equals its file offset, so a tracer's conversion
//! between the two is the identity whichever way it does it):
//!
//! | segment | sections |
//! | --- | --- |
//! | `PT_LOAD` R+X at 0 | ELF and program headers, `.hash`, `.dynsym`, `.dynstr`, `.text`, `.stapsdt.base` |
//! | `PT_LOAD` R+W at the next page | `.dynamic`, `.probes` (the semaphores, in the file so that the kernel's uprobe reference counter finds them in a file mapping) |
//! | not loaded | `.note.stapsdt`, `.pyusdt.argtypes`, `.shstrtab`, section headers |
//!
//! `.pyusdt.argtypes` lists the probes' argument types, for tracers that
//! want to know which arguments are strings ([`pyusdt_contract::args`]).

pub use pyusdt_contract::args::ArgType;
use pyusdt_contract::args::{argtypes_line, ARGTYPES_SECTION};

/// The argument registers of the x86-64 SysV calling convention, in order.
pub const REGISTERS: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];

/// One probe to put in an object.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// The probe's name.
    pub name: String,
    /// Its arguments, at most six.
    pub args: Vec<ArgType>,
}

/// A built object: its bytes and where each probe's pieces are.
#[derive(Debug)]
pub struct Image {
    /// The file's contents.
    pub bytes: Vec<u8>,
    /// A dynamic symbol at the start of `.text`, to find the load base with
    /// `dlsym`.
    pub anchor: &'static str,
    /// The address of `anchor`.
    pub anchor_addr: u64,
    /// Per probe, in the order given: (function address, semaphore
    /// address), both before relocation.
    pub probes: Vec<(u64, u64)>,
}

/// The symbol that marks the start of `.text`.
pub const ANCHOR: &str = "_pyusdt_probes_text";
/// Bytes per probe function: [`PROBE_FUNC`], then `int3` up to 16.
const FUNC_SIZE: u64 = 16;
/// A probe function: `nopl 0(%rax,%rax,1); ret`.
const PROBE_FUNC: [u8; 6] = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3];
const PAGE: u64 = 0x1000;
const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const SHDR_SIZE: u64 = 64;
const SYM_SIZE: u64 = 24;
const PHNUM: u64 = 4;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_GNU_STACK: u32 = 0x6474_e551;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const SHT_PROGBITS: u32 = 1;
const SHT_STRTAB: u32 = 3;
const SHT_HASH: u32 = 5;
const SHT_DYNAMIC: u32 = 6;
const SHT_NOTE: u32 = 7;
const SHT_DYNSYM: u32 = 11;
const SHF_WRITE: u64 = 1;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;
const DT_NULL: u64 = 0;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_STRSZ: u64 = 10;
const DT_SYMENT: u64 = 11;
const NT_STAPSDT: u32 = 3;

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// The SysV ELF hash of a symbol name.
fn elf_hash(name: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        h = (h << 4).wrapping_add(c as u32);
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
        }
        h &= !g;
    }
    h
}

/// A string table: NUL-separated, starting with an empty string.
struct StrTab(Vec<u8>);

impl StrTab {
    fn new() -> Self {
        StrTab(vec![0])
    }

    fn add(&mut self, s: &str) -> u32 {
        let at = self.0.len() as u32;
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        at
    }
}

struct Section {
    name: u32,
    kind: u32,
    flags: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
    align: u64,
    entsize: u64,
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn pad_to(b: &mut Vec<u8>, at: u64) {
    debug_assert!(b.len() as u64 <= at);
    b.resize(at as usize, 0);
}

/// The SDT argument string of a probe: `-8@%rdi 8@%rsi ...`.
pub fn arg_spec(args: &[ArgType]) -> String {
    args.iter()
        .zip(REGISTERS)
        .map(|(t, r)| format!("{}@%{}", t.sdt_size(), r))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where everything goes in an object of `n` probes: every address equals
/// its file offset.
struct Plan {
    n: u64,
    nbucket: u64,
    nsyms: u64,
    hash_off: u64,
    hash_size: u64,
    dynsym_off: u64,
    dynsym_size: u64,
    dynstr_off: u64,
    dynstr_size: u64,
    text_off: u64,
    text_size: u64,
    base_off: u64,
    rx_end: u64,
    dynamic_off: u64,
    dynamic_size: u64,
    probes_off: u64,
    probes_size: u64,
    rw_end: u64,
}

impl Plan {
    /// The loaded segments of an object of `n` probes whose dynamic
    /// symbols (`syms` of them, the null one left out) take `dynstr_size`
    /// bytes of names.
    fn new(n: u64, syms: u64, dynstr_size: u64) -> Plan {
        // Offsets in the R+X segment.
        let hash_off = align(EHDR_SIZE + PHNUM * PHDR_SIZE, 8);
        let nbucket = syms;
        let nsyms = 1 + syms;
        let hash_size = 4 * (2 + nbucket + nsyms);
        let dynsym_off = align(hash_off + hash_size, 8);
        let dynsym_size = SYM_SIZE * nsyms;
        let dynstr_off = dynsym_off + dynsym_size;
        let text_off = align(dynstr_off + dynstr_size, 16);
        let text_size = FUNC_SIZE * n.max(1);
        let base_off = text_off + text_size;
        let rx_end = base_off + 1;
        // The R+W segment.
        let dynamic_off = align(rx_end, PAGE);
        let dynamic_size = 6 * 16;
        let probes_off = dynamic_off + dynamic_size;
        let probes_size = 2 * n.max(1);
        Plan {
            n,
            nbucket,
            nsyms,
            hash_off,
            hash_size,
            dynsym_off,
            dynsym_size,
            dynstr_off,
            dynstr_size,
            text_off,
            text_size,
            base_off,
            rx_end,
            dynamic_off,
            dynamic_size,
            probes_off,
            probes_size,
            rw_end: probes_off + probes_size,
        }
    }
}

/// The `.note.stapsdt` notes and the `.pyusdt.argtypes` text of the
/// probes, and where each probe's function and semaphore are.
fn notes(provider: &str, probes: &[ProbeSpec], plan: &Plan) -> (Vec<u8>, String, Vec<(u64, u64)>) {
    let mut notes = Vec::new();
    let mut argtypes = String::new();
    let mut placed = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        let pc = plan.text_off + FUNC_SIZE * i as u64;
        let sem = plan.probes_off + 2 * i as u64;
        placed.push((pc, sem));
        let mut desc = Vec::new();
        put64(&mut desc, pc);
        put64(&mut desc, plan.base_off);
        put64(&mut desc, sem);
        for s in [provider, &p.name, &arg_spec(&p.args)] {
            desc.extend_from_slice(s.as_bytes());
            desc.push(0);
        }
        put32(&mut notes, 8);
        put32(&mut notes, desc.len() as u32);
        put32(&mut notes, NT_STAPSDT);
        notes.extend_from_slice(b"stapsdt\0");
        notes.extend_from_slice(&desc);
        let at = align(notes.len() as u64, 4);
        pad_to(&mut notes, at);
        argtypes.push_str(&argtypes_line(provider, &p.name, &p.args));
    }
    (notes, argtypes, placed)
}

/// The section headers (the null one left out): every part of `plan`,
/// then the notes and argtypes at `notes_off` and the section names at
/// `shstr_off`.
fn sections(
    plan: &Plan,
    shstr: &mut StrTab,
    (notes_off, notes_len): (u64, u64),
    (argtypes_off, argtypes_len): (u64, u64),
) -> Vec<Section> {
    let names = [
        shstr.add(".hash"),
        shstr.add(".dynsym"),
        shstr.add(".dynstr"),
        shstr.add(".text"),
        shstr.add(".stapsdt.base"),
        shstr.add(".dynamic"),
        shstr.add(".probes"),
        shstr.add(".note.stapsdt"),
        shstr.add(ARGTYPES_SECTION),
        shstr.add(".shstrtab"),
    ];
    let shstr_off = argtypes_off + argtypes_len;
    let sec = |name, kind, flags, offset, size, align| Section {
        name,
        kind,
        flags,
        offset,
        size,
        link: 0,
        info: 0,
        align,
        entsize: 0,
    };
    let p = plan;
    vec![
        Section {
            link: 2,
            entsize: 4,
            ..sec(names[0], SHT_HASH, SHF_ALLOC, p.hash_off, p.hash_size, 8)
        },
        Section {
            link: 3,
            info: 1,
            entsize: SYM_SIZE,
            ..sec(
                names[1],
                SHT_DYNSYM,
                SHF_ALLOC,
                p.dynsym_off,
                p.dynsym_size,
                8,
            )
        },
        sec(
            names[2],
            SHT_STRTAB,
            SHF_ALLOC,
            p.dynstr_off,
            p.dynstr_size,
            1,
        ),
        sec(
            names[3],
            SHT_PROGBITS,
            SHF_ALLOC | SHF_EXECINSTR,
            p.text_off,
            p.text_size,
            16,
        ),
        sec(names[4], SHT_PROGBITS, SHF_ALLOC, p.base_off, 1, 1),
        Section {
            link: 3,
            entsize: 16,
            ..sec(
                names[5],
                SHT_DYNAMIC,
                SHF_ALLOC | SHF_WRITE,
                p.dynamic_off,
                p.dynamic_size,
                8,
            )
        },
        sec(
            names[6],
            SHT_PROGBITS,
            SHF_ALLOC | SHF_WRITE,
            p.probes_off,
            p.probes_size,
            2,
        ),
        sec(names[7], SHT_NOTE, 0, notes_off, notes_len, 4),
        sec(names[8], SHT_PROGBITS, 0, argtypes_off, argtypes_len, 1),
        sec(names[9], SHT_STRTAB, 0, shstr_off, shstr.0.len() as u64, 1),
    ]
}

/// The ELF header and the program headers.
fn headers(b: &mut Vec<u8>, plan: &Plan, shoff: u64, shnum: u16) {
    b.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    b.extend_from_slice(&[0; 8]);
    put16(b, 3); // ET_DYN
    put16(b, 62); // EM_X86_64
    put32(b, 1); // EV_CURRENT
    put64(b, 0); // e_entry
    put64(b, EHDR_SIZE); // e_phoff
    put64(b, shoff);
    put32(b, 0); // e_flags
    put16(b, EHDR_SIZE as u16);
    put16(b, PHDR_SIZE as u16);
    put16(b, PHNUM as u16);
    put16(b, SHDR_SIZE as u16);
    put16(b, shnum);
    put16(b, shnum - 1); // the section names are the last section
    let phdr = |b: &mut Vec<u8>, kind: u32, flags: u32, off: u64, size: u64, align: u64| {
        put32(b, kind);
        put32(b, flags);
        put64(b, off); // p_offset
        put64(b, off); // p_vaddr
        put64(b, off); // p_paddr
        put64(b, size); // p_filesz
        put64(b, size); // p_memsz
        put64(b, align);
    };
    let p = plan;
    phdr(b, PT_LOAD, PF_R | PF_X, 0, p.rx_end, PAGE);
    phdr(
        b,
        PT_LOAD,
        PF_R | PF_W,
        p.dynamic_off,
        p.rw_end - p.dynamic_off,
        PAGE,
    );
    phdr(b, PT_DYNAMIC, PF_R | PF_W, p.dynamic_off, p.dynamic_size, 8);
    phdr(b, PT_GNU_STACK, PF_R | PF_W, 0, 0, 16);
}

/// `.hash` (one bucket per symbol, chains by hash), `.dynsym` (the anchor
/// at the start of `.text`, then each probe function) and `.dynstr`.
fn symbols(
    b: &mut Vec<u8>,
    plan: &Plan,
    sym_names: &[(u32, String)],
    placed: &[(u64, u64)],
    dynstr: &StrTab,
) {
    pad_to(b, plan.hash_off);
    let mut buckets = vec![0u32; plan.nbucket as usize];
    let mut chains = vec![0u32; plan.nsyms as usize];
    for (i, (_, name)) in sym_names.iter().enumerate() {
        let idx = i as u32 + 1;
        let h = (elf_hash(name.as_bytes()) as u64 % plan.nbucket) as usize;
        chains[idx as usize] = buckets[h];
        buckets[h] = idx;
    }
    put32(b, plan.nbucket as u32);
    put32(b, plan.nsyms as u32);
    for v in buckets.into_iter().chain(chains) {
        put32(b, v);
    }
    pad_to(b, plan.dynsym_off);
    b.extend_from_slice(&[0; SYM_SIZE as usize]);
    for (i, (name, _)) in sym_names.iter().enumerate() {
        let (kind, value, size) = if i == 0 {
            (0u8, plan.text_off, 0) // STT_NOTYPE
        } else {
            (2u8, placed[i - 1].0, PROBE_FUNC.len() as u64) // STT_FUNC
        };
        put32(b, *name);
        b.push(0x10 | kind); // STB_GLOBAL
        b.push(0); // STV_DEFAULT
        put16(b, 4); // .text
        put64(b, value);
        put64(b, size);
    }
    b.extend_from_slice(&dynstr.0);
}

/// `.text` (per probe `nopl 0(%rax,%rax,1); ret`, padded with int3),
/// `.stapsdt.base`, `.dynamic`, then the semaphores (zero).
fn code_and_data(b: &mut Vec<u8>, plan: &Plan) {
    pad_to(b, plan.text_off);
    for _ in 0..plan.n.max(1) {
        b.extend_from_slice(&PROBE_FUNC);
        b.extend_from_slice(&[0xcc; FUNC_SIZE as usize - PROBE_FUNC.len()]);
    }
    b.push(0); // .stapsdt.base
    pad_to(b, plan.dynamic_off);
    for (tag, val) in [
        (DT_HASH, plan.hash_off),
        (DT_STRTAB, plan.dynstr_off),
        (DT_SYMTAB, plan.dynsym_off),
        (DT_STRSZ, plan.dynstr_size),
        (DT_SYMENT, SYM_SIZE),
        (DT_NULL, 0),
    ] {
        put64(b, tag);
        put64(b, val);
    }
    pad_to(b, plan.rw_end);
}

/// The section headers, the null one first.
fn section_headers(b: &mut Vec<u8>, shoff: u64, sections: &[Section]) {
    pad_to(b, shoff);
    b.extend_from_slice(&[0; SHDR_SIZE as usize]);
    for s in sections {
        let addr = if s.flags & SHF_ALLOC != 0 {
            s.offset
        } else {
            0
        };
        put32(b, s.name);
        put32(b, s.kind);
        put64(b, s.flags);
        put64(b, addr);
        put64(b, s.offset);
        put64(b, s.size);
        put32(b, s.link);
        put32(b, s.info);
        put64(b, s.align);
        put64(b, s.entsize);
    }
}

/// Builds the object holding `probes` of `provider`. Names must not hold
/// NUL bytes and each probe at most six arguments (the caller checks).
pub fn build(provider: &str, probes: &[ProbeSpec]) -> Image {
    // Dynamic symbols: the null symbol, the anchor, one per probe.
    let mut dynstr = StrTab::new();
    let mut sym_names = vec![(dynstr.add(ANCHOR), ANCHOR.to_string())];
    for p in probes {
        let s = format!("{provider}:{}", p.name);
        sym_names.push((dynstr.add(&s), s));
    }
    let plan = Plan::new(
        probes.len() as u64,
        sym_names.len() as u64,
        dynstr.0.len() as u64,
    );
    // What is not loaded.
    let (notes, argtypes, placed) = notes(provider, probes, &plan);
    let notes_off = align(plan.rw_end, 4);
    let argtypes_off = notes_off + notes.len() as u64;
    let mut shstr = StrTab::new();
    let sections = sections(
        &plan,
        &mut shstr,
        (notes_off, notes.len() as u64),
        (argtypes_off, argtypes.len() as u64),
    );
    let shstr_off = argtypes_off + argtypes.len() as u64;
    let shoff = align(shstr_off + shstr.0.len() as u64, 8);

    let mut b = Vec::new();
    headers(&mut b, &plan, shoff, sections.len() as u16 + 1);
    symbols(&mut b, &plan, &sym_names, &placed, &dynstr);
    code_and_data(&mut b, &plan);
    pad_to(&mut b, notes_off);
    b.extend_from_slice(&notes);
    b.extend_from_slice(argtypes.as_bytes());
    b.extend_from_slice(&shstr.0);
    section_headers(&mut b, shoff, &sections);
    Image {
        bytes: b,
        anchor: ANCHOR,
        anchor_addr: plan.text_off,
        probes: placed,
    }
}
