//! The process's one layout, filled by `csrc/layout.c`.

use std::sync::OnceLock;

use pyusdt_contract::layout::PyusdtLayout;

extern "C" {
    fn pyusdt_fill_layout(out: *mut PyusdtLayout);
    static pyusdt_layout_c_size: usize;
    static pyusdt_debug_positions: [DebugPosition; 0];
    static pyusdt_debug_offsets_size: usize;
}

/// `struct pyusdt_debug_position` of `csrc/layout.c`.
#[repr(C)]
struct DebugPosition {
    field: *const std::ffi::c_char,
    offset: usize,
}

/// The layout's fields that the interpreter's `_Py_DebugOffsets` carries
/// too (3.13+), each with its offset there, and the size of
/// `_Py_DebugOffsets` (none and 0 before 3.13).
pub fn debug_positions() -> (Vec<(String, usize)>, usize) {
    let mut out = Vec::new();
    // SAFETY: csrc/layout.c defines the table, ended by a null field, and
    // the size; both are constant.
    unsafe {
        let mut p = pyusdt_debug_positions.as_ptr();
        while !(*p).field.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).field);
            out.push((name.to_string_lossy().into_owned(), (*p).offset));
            p = p.add(1);
        }
        (out, pyusdt_debug_offsets_size)
    }
}

static LAYOUT: OnceLock<PyusdtLayout> = OnceLock::new();

/// Fills the layout on first use. The GIL must be held.
pub fn init(_py: pyo3::Python<'_>) -> &'static PyusdtLayout {
    LAYOUT.get_or_init(|| {
        // SAFETY: a constant defined in csrc/layout.c.
        let c_size = unsafe { pyusdt_layout_c_size };
        assert_eq!(
            c_size,
            std::mem::size_of::<PyusdtLayout>(),
            "csrc/layout.c and pyext/contract disagree on the layout struct"
        );
        let mut l = PyusdtLayout::default();
        // SAFETY: `l` is a valid, writable PyusdtLayout and the C side
        // writes exactly sizeof(struct pyusdt_layout) bytes, checked equal
        // to size_of::<PyusdtLayout>() above. The GIL is
        // held, as PyInterpreterState_Main() requires.
        unsafe { pyusdt_fill_layout(&mut l) };
        l
    })
}

/// The layout, once [`init`] has run.
pub fn get() -> Option<&'static PyusdtLayout> {
    LAYOUT.get()
}
