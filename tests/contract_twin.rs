//! Every contract of `pyext/contract` has one definition in Rust (used by
//! the extension and the recorder) and one in C (`bpf/*.h`, from which the
//! BPF skeletons' types are generated). They must agree exactly: structs
//! field by field, constants value by value.

use std::mem::{offset_of, size_of, size_of_val};

use pyusdt_contract::args::ArgType;
use pyusdt_contract::calls::{self, CallRing};
use pyusdt_contract::for_each_layout_field;
use pyusdt_contract::layout::{self as pyusdt_layout, PyusdtLayout};
use pyusdt_contract::probes;
use pyusdt_contract::walk::{self, WalkError};
use pyusdt_prof::bpf;
use pyusdt_prof::target::layout::Layout;

/// The length of the array field that `field` picks out of an S.
fn array_len<S, E, const N: usize>(_field: impl Fn(&S) -> &[E; N]) -> usize {
    N
}

/// The value of `#define NAME VALUE` in a header, as a number (decimal or
/// hex, C suffixes left out).
fn number(header: &str, name: &str) -> u64 {
    let line = header
        .lines()
        .find(|l| l.starts_with(&format!("#define {name} ")))
        .unwrap_or_else(|| panic!("#define {name}"));
    let v = line.splitn(3, ' ').nth(2).expect("a value");
    let v = v
        .split("/*")
        .next()
        .unwrap_or(v)
        .trim()
        .trim_end_matches(['U', 'L']);
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    }
    .unwrap_or_else(|_| panic!("{name} = {v} is a number"))
}

#[test]
fn rust_and_c_layouts_agree_field_by_field() {
    assert_eq!(
        size_of::<PyusdtLayout>(),
        size_of::<Layout>(),
        "struct size"
    );
    let (r, c) = (PyusdtLayout::default(), Layout::default());
    let mut fields = 0;
    macro_rules! check {
        ($($f:ident),*) => { $(
            assert_eq!(offset_of!(PyusdtLayout, $f), offset_of!(Layout, $f), "offset of {}", stringify!($f));
            assert_eq!(size_of_val(&r.$f), size_of_val(&c.$f), "size of {}", stringify!($f));
            fields += 1;
        )* };
    }
    for_each_layout_field!(check);
    assert_eq!(fields, 45);
    // Every byte is some field's: no field was left out of the list.
    let covered: usize = {
        let mut n = 0;
        macro_rules! sum {
            ($($f:ident),*) => { $( n += size_of_val(&r.$f); )* };
        }
        for_each_layout_field!(sum);
        n
    };
    assert_eq!(covered, size_of::<PyusdtLayout>());
}

#[test]
fn constants_agree() {
    // The C header's constants, as the skeleton cannot carry #defines.
    let header = include_str!("../bpf/pyusdt_layout.h");
    let define = |name: &str| -> String {
        let line = header
            .lines()
            .find(|l| l.starts_with(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} in bpf/pyusdt_layout.h"));
        line.splitn(3, ' ')
            .nth(2)
            .expect("a value")
            .trim()
            .to_string()
    };
    assert_eq!(
        define("PYUSDT_LAYOUT_MAGIC"),
        format!("{:#x}ULL", pyusdt_layout::MAGIC)
    );
    assert_eq!(
        define("PYUSDT_LAYOUT_VERSION"),
        pyusdt_layout::VERSION.to_string()
    );
    assert_eq!(
        define("PYUSDT_NO_OFFSET"),
        format!("{:#x}U", pyusdt_layout::NO_OFFSET)
    );
    for (name, value) in [
        ("PYUSDT_F_CFRAME", pyusdt_layout::F_CFRAME),
        ("PYUSDT_F_INSTR_IS_PREV", pyusdt_layout::F_INSTR_IS_PREV),
        ("PYUSDT_F_DEBUG_OFFSETS", pyusdt_layout::F_DEBUG_OFFSETS),
        ("PYUSDT_F_PER_CALL_PROBES", pyusdt_layout::F_PER_CALL_PROBES),
        ("PYUSDT_F_FREE_THREADED", pyusdt_layout::F_FREE_THREADED),
    ] {
        let shift: u32 = define(name)
            .strip_prefix("(1U << ")
            .and_then(|v| v.strip_suffix(')'))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} is (1U << N)"));
        assert_eq!(1 << shift, value, "{name}");
    }
}

#[test]
fn the_call_ring_agrees() {
    let h = include_str!("../bpf/calls.h");
    assert_eq!(number(h, "CALL_RING_SLOTS"), calls::RING_SLOTS as u64);
    assert_eq!(
        number(h, "CALL_RING_HEAD"),
        offset_of!(CallRing, head) as u64
    );
    assert_eq!(
        number(h, "CALL_RING_DATA"),
        offset_of!(CallRing, slots) as u64
    );
    assert_eq!(number(h, "CALL_KIND_MASK"), calls::KIND_MASK);
    assert_eq!(number(h, "CALL_KIND_EXIT"), calls::KIND_EXIT);
    assert_eq!(number(h, "CALL_KIND_START"), calls::START);
    for exit in [calls::RETURN, calls::YIELD, calls::UNWIND] {
        assert_eq!(exit & calls::KIND_EXIT, calls::KIND_EXIT);
    }
    for entry in [calls::START, calls::RESUME, calls::THROW] {
        assert_eq!(entry & calls::KIND_EXIT, 0);
    }
    assert_eq!(number(h, "CALLS_MAX_DEPTH"), calls::MAX_DEPTH as u64);
    let t = bpf::calls::types::call_thread::default();
    assert_eq!(t.frames.len(), calls::MAX_DEPTH);
    assert_eq!(t.copy.len(), 2 * calls::RING_SLOTS);
}

#[test]
fn walk_errors_flags_and_limits_agree() {
    let h = include_str!("../bpf/pystack.h");
    let errors: Vec<(&str, u64)> = h
        .lines()
        .filter_map(|l| l.trim().strip_prefix("PYSTACK_ERR_"))
        .filter_map(|l| {
            let (name, v) = l.split_once(" = ")?;
            Some((name, v.split(',').next()?.trim().parse().ok()?))
        })
        .collect();
    let names = [
        "NO_LAYOUT",
        "NO_THREAD",
        "READ",
        "FULL",
        "NAMES",
        "KSTACK",
        "MAX",
    ];
    assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), names);
    for (i, e) in WalkError::ALL.iter().enumerate() {
        assert_eq!(errors[i].1, *e as u64, "{}", errors[i].0);
    }
    assert_eq!(errors[6].1, WalkError::ALL.len() as u64);
    let errors_len = array_len(|b: &bpf::cpu::types::bss| &b.pystack_errors);
    assert_eq!(errors_len, WalkError::ALL.len());

    assert_eq!(number(h, "PYSTACK_MAX_FRAMES"), walk::MAX_FRAMES as u64);
    assert!(h.contains(&format!("#define KSTACK_NONE ({})\n", walk::KSTACK_NONE)));
    assert_eq!(
        bpf::cpu::types::pystack::default().frames.len(),
        walk::MAX_FRAMES
    );
    assert_eq!(number(h, "HIST_SLOTS"), walk::HIST_SLOTS as u64);
    assert_eq!(
        bpf::sched::types::time_hist::default().hist.len(),
        walk::HIST_SLOTS
    );
    let cpu = include_str!("../bpf/cpu_counts.h");
    assert_eq!(
        number(cpu, "CPU_F_GIL_WAIT"),
        u64::from(walk::CPU_F_GIL_WAIT)
    );
    let span = include_str!("../bpf/span.h");
    assert_eq!(number(span, "SPAN_NAME_LEN"), walk::SPAN_NAME_LEN as u64);
    let name_len = array_len(|r: &bpf::span::types::rodata| &r.span_name);
    assert_eq!(name_len, walk::SPAN_NAME_LEN);
}

/// The probes in the `pyusdt` extension that `python` imports: name and
/// each argument's SDT size (`-8`: a signed 64-bit integer; `8`: unsigned,
/// a pointer among them).
fn extension_probes(python: &str) -> Vec<(String, Vec<String>)> {
    let out = std::process::Command::new(python)
        .args(["-c", "import pyusdt._native as n; print(n.__file__)"])
        .output()
        .expect("run the interpreter");
    assert!(out.status.success(), "{python} has no pyusdt");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let image = std::fs::read(&path).expect("read the extension");
    let mut probes: Vec<(String, Vec<String>)> = pyusdt_prof::target::usdt::notes(&image, &path)
        .into_iter()
        .filter(|p| p.provider == probes::PROVIDER)
        .map(|p| {
            let sizes = p
                .args
                .split_whitespace()
                .map(|a| a.split('@').next().unwrap_or("").to_string())
                .collect();
            (p.name, sizes)
        })
        .collect();
    probes.sort();
    probes.dedup();
    probes
}

#[test]
fn the_extension_carries_the_probe_table() {
    let pythons = std::env::var("PYUSDT_TEST_PYTHONS").unwrap_or_default();
    if pythons.trim().is_empty() {
        eprintln!("skipped: PYUSDT_TEST_PYTHONS names no interpreter");
        return;
    }
    let mut table: Vec<(&str, &[ArgType])> = probes::PROBES.to_vec();
    table.sort_by(|a, b| a.0.cmp(b.0));
    for python in pythons.split_whitespace() {
        let got = extension_probes(python);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        let want: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, want, "{python}: the extension's probes");
        for ((name, sizes), (_, types)) in got.iter().zip(&table) {
            assert_eq!(sizes.len(), types.len(), "{python}: {name}'s arguments");
            for (size, t) in sizes.iter().zip(*types) {
                // A string is a pointer (8); an integer signed (-8), or
                // unsigned (8) for addresses, counts and ids.
                let fits = match t {
                    ArgType::Str => size == "8",
                    ArgType::Int => size == "-8" || size == "8",
                };
                assert!(
                    fits,
                    "{python}: {name} has an argument of size {size}, not {t:?}"
                );
            }
        }
    }
}
