//! Naming code objects: reading a code object's qualname, file and first
//! line out of the target's memory, with the layout it announced.

use std::collections::HashMap;
use std::io;

use crate::bpf::procs::types::code_name;
use crate::profile::frame::PyFrame;
use crate::target::layout::Layout;

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

/// Plain values read out of a process's memory.
#[derive(Debug, Clone, Copy)]
pub struct Memory(pub u32);

impl Memory {
    fn bytes<const N: usize>(self, addr: u64) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        read_memory(self.0, addr, &mut b)?;
        Ok(b)
    }

    pub fn u64_at(self, addr: u64) -> io::Result<u64> {
        self.bytes(addr).map(u64::from_ne_bytes)
    }

    pub fn u32_at(self, addr: u64) -> io::Result<u32> {
        self.bytes(addr).map(u32::from_ne_bytes)
    }

    pub fn i32_at(self, addr: u64) -> io::Result<i32> {
        self.bytes(addr).map(i32::from_ne_bytes)
    }

    pub fn u8_at(self, addr: u64) -> io::Result<u8> {
        self.bytes::<1>(addr).map(|b| b[0])
    }
}

/// Names the code objects of one process, caching each address.
#[derive(Debug)]
pub struct Namer {
    pid: u32,
    /// None for a process that announced none: then only names learned
    /// elsewhere are known.
    layout: Option<Layout>,
    cache: HashMap<u64, String>,
    /// Line tables the BPF side read: the bytes kept, and the table's
    /// whole length.
    tables: HashMap<u64, (Vec<u8>, u32)>,
    lines: HashMap<(u64, u32), String>,
}

/// The `lasti` of a frame whose instruction is not known (LASTI_NONE of
/// bpf/pystack.h).
pub const LASTI_NONE: u32 = u32::MAX;

/// Longest name read, in characters.
const MAX_STR: u64 = 1024;

impl Namer {
    /// A namer for process `pid`, which announced `layout` (or none).
    pub fn new(pid: u32, layout: Option<Layout>) -> Self {
        Namer {
            pid,
            layout,
            cache: HashMap::new(),
            tables: HashMap::new(),
            lines: HashMap::new(),
        }
    }

    fn u64_at(&self, addr: u64) -> io::Result<u64> {
        Memory(self.pid).u64_at(addr)
    }

    fn u32_at(&self, addr: u64) -> io::Result<u32> {
        Memory(self.pid).u32_at(addr)
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

    /// The layout the process announced.
    pub fn layout(&self) -> io::Result<&Layout> {
        self.layout
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no layout"))
    }

    fn read_name(&self, code: u64) -> io::Result<String> {
        let l = self.layout()?;
        let qualname = self.str_at(self.u64_at(code + u64::from(l.code_qualname))?)?;
        let file = self.str_at(self.u64_at(code + u64::from(l.code_filename))?)?;
        let first = self.u32_at(code + u64::from(l.code_firstlineno))? as i32;
        Ok(PyFrame::name(&qualname, &file, first))
    }

    /// Takes a name read elsewhere (by the BPF side, at first sight) as
    /// the code object's name.
    pub fn learn(&mut self, code: u64, name: String) {
        self.cache.insert(code, name);
    }

    /// Takes a line table read elsewhere (by the BPF side): `data`, the
    /// first bytes of a table of `full_len`.
    pub fn learn_lines(&mut self, code: u64, data: Vec<u8>, full_len: u32) {
        self.tables.insert(code, (data, full_len));
    }

    /// The code object's line table from the process's memory.
    fn read_table(&self, code: u64) -> io::Result<Vec<u8>> {
        let l = self.layout()?;
        let table = self.u64_at(code + u64::from(l.code_linetable))?;
        let size = self.u64_at(table + u64::from(l.bytes_size))?.min(1 << 20);
        let mut b = vec![0u8; size as usize];
        read_memory(self.pid, table + u64::from(l.bytes_data), &mut b)?;
        Ok(b)
    }

    /// `qualname (file:line)`: the code object at `code` at the line of
    /// instruction `lasti`; its function name ([`Namer::name`]) when the
    /// line cannot be known.
    pub fn line_name(&mut self, code: u64, lasti: u32) -> String {
        if let Some(n) = self.lines.get(&(code, lasti)) {
            return n.clone();
        }
        let function = self.name(code).to_string();
        let mut name = function.clone();
        if let Some((q, file, first)) = PyFrame::split(&function) {
            let learned = self.tables.get(&code);
            let complete = learned.filter(|(d, full)| d.len() as u32 >= *full);
            let line = match complete {
                Some((d, _)) => addr2line(d, first as i32, lasti),
                // A table cut short, or none: the process's own, if it
                // still runs; else what was kept.
                None => match self.read_table(code) {
                    Ok(t) => addr2line(&t, first as i32, lasti),
                    Err(_) => learned.and_then(|(d, _)| addr2line(d, first as i32, lasti)),
                },
            };
            if let (Some(line), true) = (line, lasti != LASTI_NONE) {
                name = PyFrame::name(q, file, line);
            }
        }
        self.lines.insert((code, lasti), name.clone());
        name
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

/// The line of instruction `lasti` (in code units) in a code object whose
/// first line is `firstlineno`, from its line table (`co_linetable`, the
/// location table of CPython 3.11 and later, Objects/locations.md); None
/// for an instruction without a line or past the table's end.
pub fn addr2line(table: &[u8], firstlineno: i32, lasti: u32) -> Option<i32> {
    let varint = |at: &mut usize| -> u32 {
        let mut read = u32::from(*table.get(*at).unwrap_or(&0));
        *at += 1;
        let mut val = read & 63;
        let mut shift = 0;
        while read & 64 != 0 && shift < 30 {
            read = u32::from(*table.get(*at).unwrap_or(&0));
            *at += 1;
            shift += 6;
            val |= (read & 63) << shift;
        }
        val
    };
    let (mut line, mut addr, mut at) = (firstlineno, 0u32, 0usize);
    while at < table.len() {
        let head = table[at];
        let code = (head >> 3) & 15;
        let len = u32::from(head & 7) + 1;
        let mut next = at + 1;
        let delta = match code {
            13 | 14 => {
                let u = varint(&mut next);
                if u & 1 != 0 {
                    -((u >> 1) as i32)
                } else {
                    (u >> 1) as i32
                }
            }
            11 => 1,
            12 => 2,
            _ => 0,
        };
        line += delta;
        if lasti < addr + len {
            return (code != 15).then_some(line);
        }
        addr += len;
        // The next entry starts at the next byte with its top bit set.
        at = next;
        while at < table.len() && table[at] & 0x80 == 0 {
            at += 1;
        }
    }
    None
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

/// A code object's names as the BPF side read them (`struct code_name`),
/// as profiles name a Python frame: `qualname (file:firstline)`.
pub fn code_name(n: &code_name) -> String {
    let q = &n.qualname[..(n.qualname_len as usize).min(n.qualname.len())];
    let f = &n.filename[..(n.filename_len as usize).min(n.filename.len())];
    let bytes = |s: &[i8]| s.iter().map(|&b| b as u8).collect::<Vec<u8>>();
    PyFrame::name(
        &decode(&bytes(q), n.qualname_kind),
        &decode(&bytes(f), n.filename_kind),
        n.firstlineno,
    )
}

#[cfg(test)]
mod tests {
    use super::{addr2line, decode};

    #[test]
    fn reads_line_tables_as_cpython_does() {
        // f's table and co_lines() from CPython 3.12:
        //   def f(a):                     # line 1
        //       x = a + 1
        //       if x > 3:
        //           y = [i for i in range(x)]
        //       else:
        //           y = None
        //       return y
        let table = [
            128, 0, 216, 8, 9, 136, 65, 137, 5, 128, 65, 216, 7, 8, 136, 49, 130, 117, 220, 24, 29,
            152, 97, 155, 8, 214, 12, 33, 144, 49, 138, 81, 208, 12, 33, 136, 1, 208, 12, 33, 240,
            6, 0, 12, 13, 128, 72, 240, 3, 0, 13, 17, 136, 1, 216, 11, 12, 128, 72, 249, 242, 7, 0,
            13, 34,
        ];
        let ranges: [(u32, u32, Option<i32>); 9] = [
            (0, 1, Some(1)),
            (1, 6, Some(2)),
            (6, 11, Some(3)),
            (11, 35, Some(4)),
            (35, 37, Some(7)),
            (37, 39, Some(6)),
            (39, 41, Some(7)),
            (41, 43, None),
            (43, 46, Some(4)),
        ];
        for (start, end, line) in ranges {
            for lasti in start..end {
                assert_eq!(addr2line(&table, 1, lasti), line, "lasti {lasti}");
            }
        }
        assert_eq!(addr2line(&table, 1, 46), None);
        assert_eq!(addr2line(&[], 1, 0), None);
    }

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
