//! Compiles csrc/layout.c against the target interpreter's internal
//! headers, so the layout's offsets are the compiler's.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let cfg = pyo3_build_config::get();
    let exe = cfg
        .executable()
        .map(str::to_owned)
        .expect("pyo3 found no Python interpreter; set PYO3_PYTHON");
    let out = Command::new(&exe)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['include'])",
        ])
        .output()
        .unwrap_or_else(|e| panic!("run {exe}: {e}"));
    assert!(
        out.status.success(),
        "{exe} could not name its include directory"
    );
    let include = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let internal = include.join("internal");
    assert!(
        internal.join("pycore_frame.h").exists(),
        "{} has no internal headers (pycore_frame.h): pyusdt needs a CPython \
         installed with its include/pythonX.Y/internal directory",
        include.display()
    );
    cc::Build::new()
        .file("csrc/layout.c")
        .include(&include)
        .include(&internal)
        // Only for #include "pyusdt_layout.h": bpf/ must not shadow a
        // system header.
        .flag("-iquote")
        .flag("../bpf")
        .warnings(true)
        .extra_warnings(true)
        .compile("pyusdt_layout");
    println!("cargo:rerun-if-changed=csrc/layout.c");
    println!("cargo:rerun-if-changed=../bpf/pyusdt_layout.h");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
