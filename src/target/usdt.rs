//! USDT probes a process carries: the SystemTap SDT notes
//! (`.note.stapsdt`) of every file it maps, as `pyusdt-prof list` shows
//! them.

use std::fs;

use anyhow::{bail, Context};

use crate::target::{self, elf};
use crate::Result;

/// One USDT probe of one file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsdtProbe {
    /// The provider, as in `provider:name`.
    pub provider: String,
    /// The probe's name.
    pub name: String,
    /// Its argument specifiers (`8@%rdi -4@%esi ...`).
    pub args: String,
    /// Whether it has a semaphore (tracers turn it on; the program may ask).
    pub semaphore: bool,
    /// The file as the process mapped it.
    pub file: String,
}

/// The probes in the `.note.stapsdt` section of a little-endian ELF64
/// image; none if it has no such section or is not such an image.
pub fn notes(image: &[u8], file: &str) -> Vec<UsdtProbe> {
    elf::sdt_notes(image)
        .into_iter()
        .map(|n| UsdtProbe {
            provider: n.provider,
            name: n.name,
            args: n.args,
            semaphore: n.semaphore,
            file: file.into(),
        })
        .collect()
}

/// Every USDT probe in the files process `pid` maps.
pub fn list(pid: u32) -> Result<Vec<UsdtProbe>> {
    let files = match target::mapped_files(pid) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("no process with PID {pid}"),
        Err(e) => return Err(e).with_context(|| format!("read the memory map of process {pid}")),
    };
    let mut out = Vec::new();
    for file in &files {
        if let Ok(image) = fs::read(target::through_root(pid, file)) {
            out.extend(notes(&image, file));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `pyusdt-prof list`: process `pid`'s probes, a line each (name,
/// semaphore, file, arguments).
pub fn listing(pid: u32) -> Result<String> {
    use std::fmt::Write as _;
    let probes = list(pid)?;
    let mut out = String::new();
    if probes.is_empty() {
        let _ = writeln!(out, "process {pid} carries no USDT probes");
    }
    for p in &probes {
        let name = format!("{}:{}", p.provider, p.name);
        let _ = writeln!(
            out,
            "{name:<28} {:<9} {}  {}",
            if p.semaphore { "semaphore" } else { "" },
            p.file,
            p.args
        );
    }
    Ok(out)
}
