//! Naming code objects: reading a code object's qualname, file and first
//! line out of the target's memory, with the layout it announced.

use std::collections::HashMap;
use std::io;

use crate::layout::Layout;

/// Reads `buf.len()` bytes at `addr` in process `pid`.
pub fn read_memory(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, which we own mutably; the kernel
    // checks `remote` against the target's address space.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
    }
    Ok(())
}

/// Names the code objects of one process, caching each address.
#[derive(Debug)]
pub struct Namer {
    pid: u32,
    /// None for a process that announced none: then only names learned
    /// elsewhere are known.
    layout: Option<Layout>,
    cache: HashMap<u64, String>,
}

/// Longest name read, in characters.
const MAX_STR: u64 = 1024;

impl Namer {
    /// A namer for process `pid`, which announced `layout` (or none).
    pub fn new(pid: u32, layout: Option<Layout>) -> Self {
        Namer {
            pid,
            layout,
            cache: HashMap::new(),
        }
    }

    fn u64_at(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        read_memory(self.pid, addr, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    fn u32_at(&self, addr: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        read_memory(self.pid, addr, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    /// The text of the str object at `addr`.
    pub fn str_at(&self, addr: u64) -> io::Result<String> {
        let l = self.layout()?;
        let state = self.u32_at(addr + u64::from(l.unicode_state))?;
        let length = self
            .u64_at(addr + u64::from(l.unicode_length))?
            .min(MAX_STR);
        let bit = |shift: u32| (state >> shift) & 1 == 1;
        if !bit(l.unicode_compact_bit) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a compact str",
            ));
        }
        if bit(l.unicode_ascii_bit) {
            let mut b = vec![0u8; length as usize];
            read_memory(self.pid, addr + u64::from(l.unicode_ascii_data), &mut b)?;
            return Ok(String::from_utf8_lossy(&b).into_owned());
        }
        let kind = (state >> l.unicode_kind_shift) & 7;
        if !matches!(kind, 1 | 2 | 4) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad str kind"));
        }
        let mut b = vec![0u8; (length * u64::from(kind)) as usize];
        read_memory(self.pid, addr + u64::from(l.unicode_compact_data), &mut b)?;
        Ok(decode(&b, kind as u8))
    }

    fn layout(&self) -> io::Result<&Layout> {
        self.layout
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no layout"))
    }

    fn read_name(&self, code: u64) -> io::Result<String> {
        let l = self.layout()?;
        let qualname = self.str_at(self.u64_at(code + u64::from(l.code_qualname))?)?;
        let file = self.str_at(self.u64_at(code + u64::from(l.code_filename))?)?;
        let first = self.u32_at(code + u64::from(l.code_firstlineno))? as i32;
        Ok(format!("{qualname} ({file}:{first})"))
    }

    /// Takes a name read elsewhere (by the BPF side, at first sight) as
    /// the code object's name.
    pub fn learn(&mut self, code: u64, name: String) {
        self.cache.insert(code, name);
    }

    /// `qualname (file:firstline)` of the code object at `code`, or a
    /// placeholder naming the address when it cannot be read.
    pub fn name(&mut self, code: u64) -> &str {
        if !self.cache.contains_key(&code) {
            let name = self
                .read_name(code)
                .unwrap_or_else(|_| format!("[unknown code {code:#x}]"));
            self.cache.insert(code, name);
        }
        &self.cache[&code]
    }
}

/// Text of `len` bytes of a str's raw characters, `kind` bytes each.
pub fn decode(bytes: &[u8], kind: u8) -> String {
    match kind {
        2 => char::decode_utf16(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        4 => bytes
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        _ => bytes.iter().map(|&c| char::from(c)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_each_kind() {
        assert_eq!(decode(b"f\xfcnf", 1), "fünf");
        let ucs2: Vec<u8> = "関数".encode_utf16().flat_map(u16::to_ne_bytes).collect();
        assert_eq!(decode(&ucs2, 2), "関数");
        let ucs4: Vec<u8> = "a🐍"
            .chars()
            .flat_map(|c| (c as u32).to_ne_bytes())
            .collect();
        assert_eq!(decode(&ucs4, 4), "a🐍");
    }
}
