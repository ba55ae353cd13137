//! USDT probes a process carries: the SystemTap SDT notes
//! (`.note.stapsdt`) of every file it maps, as `pyusdt-prof list` shows
//! them.

use std::fs;

use anyhow::{bail, Context};

use crate::{target, Result};

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

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn cstr(b: &[u8]) -> (&str, &[u8]) {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    (
        std::str::from_utf8(&b[..end]).unwrap_or("?"),
        b.get(end + 1..).unwrap_or(&[]),
    )
}

/// The probes in the `.note.stapsdt` section of a little-endian ELF64
/// image; none if it has no such section or is not such an image.
pub fn notes(image: &[u8], file: &str) -> Vec<UsdtProbe> {
    let mut out = Vec::new();
    if image.get(..4) != Some(b"\x7fELF") || image.get(4) != Some(&2) || image.get(5) != Some(&1) {
        return out;
    }
    let (Some(shoff), Some(shentsize), Some(shnum), Some(shstrndx)) = (
        u64_at(image, 0x28),
        u16_at(image, 0x3a),
        u16_at(image, 0x3c),
        u16_at(image, 0x3e),
    ) else {
        return out;
    };
    let section = |i: usize| -> Option<(u32, u64, u64)> {
        let at = shoff as usize + i * shentsize as usize;
        Some((
            u32_at(image, at)?,
            u64_at(image, at + 0x18)?,
            u64_at(image, at + 0x20)?,
        ))
    };
    let Some((_, str_off, str_size)) = section(shstrndx as usize) else {
        return out;
    };
    let names = image
        .get(str_off as usize..(str_off + str_size) as usize)
        .unwrap_or(&[]);
    for i in 0..shnum as usize {
        let Some((name_off, off, size)) = section(i) else {
            continue;
        };
        let (name, _) = cstr(names.get(name_off as usize..).unwrap_or(&[]));
        if name != ".note.stapsdt" {
            continue;
        }
        let Some(mut notes) = image.get(off as usize..(off + size) as usize) else {
            continue;
        };
        // Each note: namesz, descsz, type, name (padded to 4), desc (padded).
        while notes.len() >= 12 {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(notes, 0), u32_at(notes, 4), u32_at(notes, 8))
            else {
                break;
            };
            let pad = |n: u32| (n as usize).div_ceil(4) * 4;
            let name_end = 12 + pad(namesz);
            let desc = notes
                .get(name_end..name_end + descsz as usize)
                .unwrap_or(&[]);
            if kind == 3 && notes.get(12..12 + 7) == Some(b"stapsdt") && desc.len() > 24 {
                let semaphore = u64_at(desc, 16).unwrap_or(0) != 0;
                let (provider, rest) = cstr(&desc[24..]);
                let (probe, rest) = cstr(rest);
                let (args, _) = cstr(rest);
                out.push(UsdtProbe {
                    provider: provider.into(),
                    name: probe.into(),
                    args: args.into(),
                    semaphore,
                    file: file.into(),
                });
            }
            notes = notes.get(name_end + pad(descsz)..).unwrap_or(&[]);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nothing_from_what_is_not_elf() {
        assert!(notes(b"not an elf", "x").is_empty());
        assert!(notes(b"\x7fELF\x02\x01", "x").is_empty());
    }
}
