//! The process's one layout, filled by `csrc/layout.c`.

use std::sync::OnceLock;

use pyusdt_layout::PyusdtLayout;

extern "C" {
    fn pyusdt_fill_layout(out: *mut PyusdtLayout);
    static pyusdt_layout_c_size: usize;
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
            "csrc/layout.c and pyext/layout disagree on the layout struct"
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
