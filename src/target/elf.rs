//! Reading the files a process maps, as little-endian ELF64 images: their
//! sections by name, and the SystemTap SDT notes (`.note.stapsdt`) in
//! them. One reader for `list`, `trace` and the recorder.

/// A file mapped read-only, read as bytes: only the pages looked at are
/// read (an interpreter's symbols, not its 30 MB).
#[derive(Debug)]
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    pub fn open(path: &std::path::Path) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(0);
        if len == 0 {
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh private read-only mapping of a file we opened; the
        // descriptor may close once it is made.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes until drop. (A file cut
        // short under us would fault: the interpreters read here are not
        // rewritten while they run.)
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in open, unmapped once.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The text before the first NUL of `b` (`?` if it is not UTF-8), and
/// what follows that NUL.
pub fn cstr(b: &[u8]) -> (&str, &[u8]) {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    (
        std::str::from_utf8(&b[..end]).unwrap_or("?"),
        b.get(end + 1..).unwrap_or(&[]),
    )
}

/// `SHT_NOBITS`: a section without bytes in the file.
const SHT_NOBITS: u32 = 8;

/// A section of an image: its name and its bytes in the file (none for a
/// section without any, NOBITS, or one that lies past the image's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// Every section of a little-endian ELF64 image; none if it is not one.
pub fn sections(image: &[u8]) -> Vec<Section<'_>> {
    let mut out = Vec::new();
    if image.get(..6) != Some(b"\x7fELF\x02\x01") {
        return out;
    }
    let (Some(shoff), Some(shentsize), Some(shnum), Some(shstrndx)) = (
        u64_at(image, 0x28).and_then(|o| usize::try_from(o).ok()),
        u16_at(image, 0x3a).map(usize::from),
        u16_at(image, 0x3c).map(usize::from),
        u16_at(image, 0x3e).map(usize::from),
    ) else {
        return out;
    };
    // (name offset, type, file offset, size) of section i.
    let header = |i: usize| -> Option<(usize, u32, usize, usize)> {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(image, at)? as usize,
            u32_at(image, at + 4)?,
            usize::try_from(u64_at(image, at + 0x18)?).ok()?,
            usize::try_from(u64_at(image, at + 0x20)?).ok()?,
        ))
    };
    let Some(names) =
        header(shstrndx).and_then(|(_, _, off, size)| image.get(off..off.checked_add(size)?))
    else {
        return out;
    };
    for i in 0..shnum {
        let Some((name_off, kind, off, size)) = header(i) else {
            continue;
        };
        let Some(n) = names.get(name_off..) else {
            continue;
        };
        let data = match kind {
            SHT_NOBITS => &[][..],
            _ => off
                .checked_add(size)
                .and_then(|end| image.get(off..end))
                .unwrap_or(&[]),
        };
        out.push(Section {
            name: cstr(n).0,
            data,
        });
    }
    out
}

/// The bytes of section `name` of a little-endian ELF64 image, if it has
/// one with bytes in the file.
pub fn section<'a>(image: &'a [u8], name: &str) -> Option<&'a [u8]> {
    sections(image)
        .into_iter()
        .find(|s| s.name == name && !s.data.is_empty())
        .map(|s| s.data)
}

/// The value of the symbol `name` that a little-endian ELF64 image
/// defines, from its dynamic symbols, else its full symbol table (a file
/// stripped of that one still has the first).
pub fn symbol(image: &[u8], name: &str) -> Option<u64> {
    [(".dynsym", ".dynstr"), (".symtab", ".strtab")]
        .into_iter()
        .find_map(|(table, strings)| {
            let (table, strings) = (section(image, table)?, section(image, strings)?);
            // Elf64_Sym: name (4), info, other, section index (2), value (8),
            // size (8).
            table.chunks_exact(24).find_map(|sym| {
                let defined = u16_at(sym, 6)? != 0;
                let n = strings.get(u32_at(sym, 0)? as usize..)?;
                (defined && cstr(n).0 == name)
                    .then(|| u64_at(sym, 8))
                    .flatten()
            })
        })
}

/// The address the image asks its first file byte to be loaded at (the
/// first PT_LOAD segment's address less its file offset): a process's
/// address of a symbol is its value plus where that byte went less this.
pub fn first_load(image: &[u8]) -> Option<u64> {
    const PT_LOAD: u32 = 1;
    let phoff = usize::try_from(u64_at(image, 0x20)?).ok()?;
    let (size, count) = (
        usize::from(u16_at(image, 0x36)?),
        usize::from(u16_at(image, 0x38)?),
    );
    (0..count)
        .filter_map(|i| {
            let at = phoff.checked_add(i.checked_mul(size)?)?;
            (u32_at(image, at)? == PT_LOAD).then_some(())?;
            let (offset, vaddr) = (u64_at(image, at + 8)?, u64_at(image, at + 0x10)?);
            Some((offset, vaddr.checked_sub(offset)?))
        })
        .min()
        .map(|(_, base)| base)
}

/// One SDT note: a USDT probe of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdtNote {
    pub provider: String,
    pub name: String,
    /// Its argument specifiers (`8@%rdi -4@%esi ...`).
    pub args: String,
    /// Whether it has a semaphore.
    pub semaphore: bool,
}

/// The SDT notes in the `.note.stapsdt` sections of an image.
pub fn sdt_notes(image: &[u8]) -> Vec<SdtNote> {
    let mut out = Vec::new();
    for s in sections(image)
        .into_iter()
        .filter(|s| s.name == ".note.stapsdt")
    {
        let mut notes = s.data;
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
                out.push(SdtNote {
                    provider: provider.into(),
                    name: probe.into(),
                    args: args.into(),
                    semaphore,
                });
            }
            notes = notes.get(name_end + pad(descsz)..).unwrap_or(&[]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 image with a null section, `.shstrtab` and one
    /// section `name` holding `data`.
    fn elf_with(name: &str, data: &[u8]) -> Vec<u8> {
        let mut strtab = b"\0.shstrtab\0".to_vec();
        let name_off = strtab.len() as u32;
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
        let mut img = vec![0u8; 64];
        img[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let data_off = img.len();
        img.extend_from_slice(data);
        let str_off = img.len();
        img.extend_from_slice(&strtab);
        let shoff = img.len();
        let sh = |name: u32, kind: u32, off: usize, size: usize| {
            let mut s = vec![0u8; 64];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            s[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            s
        };
        let headers = [
            sh(0, 0, 0, 0),
            sh(1, 3, str_off, strtab.len()),
            sh(name_off, 1, data_off, data.len()),
        ];
        for h in headers {
            img.extend_from_slice(&h);
        }
        img[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        img[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        img[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        img[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        img
    }

    #[test]
    fn finds_the_argtypes_section() {
        use pyusdt_contract::args::ARGTYPES_SECTION;
        let elf_section = section;
        let img = elf_with(ARGTYPES_SECTION, b"myapp:tick:int,str\n");
        assert_eq!(
            elf_section(&img, ARGTYPES_SECTION),
            Some(&b"myapp:tick:int,str\n"[..])
        );
        assert_eq!(elf_section(&img, ".other"), None);
        assert_eq!(elf_section(b"not an elf", ARGTYPES_SECTION), None);
        let cut = &img[..img.len() - 64];
        assert_eq!(elf_section(cut, ARGTYPES_SECTION), None);
    }

    #[test]
    fn reads_nothing_from_what_is_not_elf() {
        assert!(sdt_notes(b"not an elf").is_empty());
        assert!(sdt_notes(b"\x7fELF\x02\x01").is_empty());
    }

    #[test]
    fn reads_the_notes_it_finds() {
        // One note: provider p, probe n, args "8@%rdi", a semaphore.
        let mut desc = Vec::new();
        desc.extend_from_slice(&0x1000u64.to_le_bytes());
        desc.extend_from_slice(&0u64.to_le_bytes());
        desc.extend_from_slice(&0x2000u64.to_le_bytes());
        desc.extend_from_slice(b"p\0n\x008@%rdi\0");
        let mut note = Vec::new();
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        note.extend_from_slice(&3u32.to_le_bytes());
        note.extend_from_slice(b"stapsdt\0");
        note.extend_from_slice(&desc);
        note.resize(note.len().div_ceil(4) * 4, 0);
        let img = elf_with(".note.stapsdt", &note);
        let notes = sdt_notes(&img);
        assert_eq!(notes.len(), 1);
        assert_eq!(
            (
                notes[0].provider.as_str(),
                notes[0].name.as_str(),
                notes[0].args.as_str()
            ),
            ("p", "n", "8@%rdi")
        );
        assert!(notes[0].semaphore);
    }
}
