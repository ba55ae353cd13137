//! The layout of a process that runs CPython without pyusdt, found from
//! outside, so that any running Python can be recorded without a restart.
//!
//! The offsets come from a table per minor version (`tables.json`, made
//! by `make layout-tables` from what pyusdt's `csrc/layout.c` compiles
//! against each interpreter's own internal headers; a test checks each
//! against its interpreter). From 3.13 on, the interpreter carries its own
//! `_Py_DebugOffsets` at the start of `_PyRuntime`: every field it has is
//! read from there, the process's own word over the table's. The
//! addresses come from the interpreter's symbols (`_PyRuntime`,
//! `PyCode_Type`, `Py_Version`) and from its memory (the main interpreter
//! and its GIL).
//!
//! Where pyusdt is loaded, its announcement stays the source: it is the
//! interpreter's own compiler speaking, and it comes with thread names.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use pyusdt_contract::for_each_layout_field;
use pyusdt_contract::layout as contract;
use serde_json::Value;

use crate::profile::pyname::{read_memory, Memory};
use crate::target::layout::{self, Layout};
use crate::target::{elf, interpreter_files, through_root};
use crate::Result;

/// The tables, by minor version: `layout` (every offset and the version's
/// flags), `debug` (each field's offset in `_Py_DebugOffsets`) and
/// `debug_size`.
const TABLES: &str = include_str!("tables.json");

/// `_Py_DebugOffsets.cookie`.
const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// The minor versions the tables know, as `3.11`.
pub fn known_versions() -> Vec<String> {
    tables()
        .as_object()
        .map(|m| m.keys().filter(|k| k.starts_with("3.")).cloned().collect())
        .unwrap_or_default()
}

/// The tables, parsed once.
fn tables() -> &'static Value {
    static PARSED: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    PARSED.get_or_init(|| serde_json::from_str(TABLES).expect("src/target/tables.json is JSON"))
}

/// Sets a layout field by name; false for a name it has not, or a value
/// too wide for it.
fn set(l: &mut Layout, name: &str, v: u64) -> bool {
    macro_rules! put {
        ($($f:ident),*) => {
            match name {
                $( stringify!($f) => v.try_into().map(|x| l.$f = x).is_ok(), )*
                _ => false,
            }
        };
    }
    for_each_layout_field!(put)
}

/// The interpreter file of process `pid` that defines `_PyRuntime`, read
/// whole, with its path as the process maps it, and `_PyRuntime`'s value;
/// None while the loader has yet to map the libpython that its python
/// needs (a program just exec'd).
fn interpreter(pid: u32) -> Result<Option<(String, elf::Mapped, u64)>> {
    let mut tried = Vec::new();
    let mut needs_libpython = false;
    for file in interpreter_files(pid) {
        let path: PathBuf = through_root(pid, &file);
        let image = elf::Mapped::open(&path).with_context(|| format!("read {}", path.display()))?;
        if let Some(runtime) = elf::symbol(&image, "_PyRuntime") {
            return Ok(Some((file, image, runtime)));
        }
        needs_libpython |= elf::section(&image, ".dynstr")
            .is_some_and(|s| s.windows(9).any(|w| w == b"libpython"));
        tried.push(file);
    }
    if needs_libpython {
        return Ok(None);
    }
    if tried.is_empty() {
        bail!("process {pid} maps no python executable or libpython");
    }
    bail!(
        "process {pid}'s interpreter defines no _PyRuntime (looked in {})",
        tried.join(", ")
    )
}

/// The layout of process `pid`, found from its interpreter's symbols, the
/// tables and its memory; None while its interpreter has not started yet
/// (a program just exec'd).
pub fn derive(pid: u32) -> Result<Option<Layout>> {
    let Some((file, image, runtime)) = interpreter(pid)? else {
        return Ok(None);
    };
    let mem = Memory(pid);
    let first = elf::first_load(&image).ok_or_else(|| anyhow!("{file} is not an ELF64 image"))?;
    let start = super::load_address(pid, &file)
        .ok_or_else(|| anyhow!("process {pid} no longer maps {file}"))?;
    let at = |value: u64| start.wrapping_add(value).wrapping_sub(first);
    let symbol = |name: &str| {
        elf::symbol(&image, name)
            .map(at)
            .ok_or_else(|| anyhow!("{file} defines no {name}"))
    };
    let runtime = at(runtime);
    // Py_Version is there from 3.11 on.
    let Ok(py_version) = symbol("Py_Version") else {
        bail!(
            "process {pid} runs a CPython older than 3.11 ({file} has no Py_Version): \
             pyusdt-prof reads 3.11 to 3.15"
        );
    };
    let version = mem
        .u64_at(py_version)
        .with_context(|| format!("read Py_Version in process {pid}"))? as u32;
    let minor = format!("{}.{}", version >> 24, (version >> 16) & 0xff);
    let tables = tables();
    let Some(table) = tables.get(&minor) else {
        bail!(
            "process {pid} runs CPython {minor}; without pyusdt, pyusdt-prof knows the \
             layouts of CPython {}",
            known_versions().join(", ")
        );
    };
    let mut l = Layout::default();
    for (name, v) in table["layout"].as_object().into_iter().flatten() {
        let v = v.as_u64().unwrap_or(u64::MAX);
        if !set(&mut l, name, v) {
            bail!("src/target/tables.json: {minor} has a bad {name}: {v}");
        }
    }
    l.magic = contract::MAGIC;
    l.version = contract::VERSION;
    l.size = std::mem::size_of::<Layout>() as u32;
    l.py_version_hex = version;
    l.runtime_addr = runtime;
    l.code_type_addr = symbol("PyCode_Type")?;
    if let Some(size) = table["debug_size"].as_u64().filter(|&s| s > 0) {
        let mut d = vec![0u8; size as usize];
        read_memory(pid, runtime, &mut d)
            .with_context(|| format!("read _Py_DebugOffsets in process {pid}"))?;
        if d.get(..8) != Some(&DEBUG_COOKIE[..]) {
            bail!("process {pid}'s _PyRuntime does not start with _Py_DebugOffsets");
        }
        let word = |at: usize| {
            let b: [u8; 8] = d.get(at..at.checked_add(8)?)?.try_into().ok()?;
            Some(u64::from_ne_bytes(b))
        };
        if word(16).unwrap_or(0) != 0 {
            l.flags |= contract::F_FREE_THREADED;
        }
        for (name, at) in table["debug"].as_object().into_iter().flatten() {
            let v = at.as_u64().and_then(|at| word(at as usize));
            if !v.is_some_and(|v| set(&mut l, name, v)) {
                bail!("process {pid}'s _Py_DebugOffsets has no usable {name}");
            }
        }
        l.flags |= contract::F_DEBUG_OFFSETS;
    }
    // The main interpreter is the first made, the last in the list.
    let mut interp = mem.u64_at(runtime + u64::from(l.runtime_interpreters_head))?;
    if interp == 0 {
        return Ok(None);
    }
    for _ in 0..256 {
        match mem.u64_at(interp + u64::from(l.interp_next))? {
            0 => break,
            next => interp = next,
        }
    }
    l.interp_addr = interp;
    if mem.u64_at(interp + u64::from(l.interp_threads_head))? == 0 {
        return Ok(None);
    }
    l.gil_addr = if version < 0x030c_0000 {
        runtime + u64::from(l.gil_at)
    } else {
        mem.u64_at(interp + u64::from(l.gil_at))?
    };
    if l.gil_addr == 0 {
        return Ok(None);
    }
    layout::check(pid, &l, u64::from(l.size))?;
    Ok(Some(l))
}

/// [`derive`], for a process that must be running Python now.
pub fn derive_now(pid: u32) -> Result<Layout> {
    derive(pid)?.ok_or_else(|| not_started(pid))
}

/// What [`derive`]'s None means, in words.
pub fn not_started(pid: u32) -> anyhow::Error {
    anyhow!("process {pid} has not started its Python interpreter yet: try again in a moment")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_sets_every_offset_it_names() {
        let t = tables();
        let versions = known_versions();
        assert_eq!(versions, ["3.11", "3.12", "3.13", "3.14", "3.15"]);
        for v in &versions {
            let mut l = Layout::default();
            for (name, value) in t[v]["layout"].as_object().unwrap() {
                assert!(set(&mut l, name, value.as_u64().unwrap()), "{v} {name}");
            }
            assert_ne!(l.frame_previous, 0, "{v}");
            let debug = t[v]["debug"].as_object().unwrap();
            assert_eq!(debug.is_empty(), v.as_str() < "3.13", "{v}");
            for name in debug.keys() {
                assert!(set(&mut l, name, 0), "{v} {name}");
            }
        }
    }
}
