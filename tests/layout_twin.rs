//! The layout struct has one definition in Rust (`pyext/layout`, used by
//! the extension that fills it) and one in C (`bpf/pyusdt_layout.h`, from
//! which the BPF skeleton's type is generated). They must agree exactly.

use std::mem::{offset_of, size_of, size_of_val};

use pyusdt_layout::{for_each_layout_field, PyusdtLayout};
use pyusdt_prof::layout::Layout;

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
    assert_eq!(fields, 43);
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
    ] {
        let shift: u32 = define(name)
            .strip_prefix("(1U << ")
            .and_then(|v| v.strip_suffix(')'))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} is (1U << N)"));
        assert_eq!(1 << shift, value, "{name}");
    }
}
