//! Finding the target: the process, the pyusdt extension it has loaded
//! and the files it maps ([`usdt`] reads their USDT notes), the layout it
//! announces ([`layout`]), or a program launched to be recorded
//! ([`launch`]).

use std::fs;
use std::io;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::Result;

pub mod derive;
pub mod dump;
pub mod elf;
pub mod launch;
pub mod layout;
pub mod usdt;
pub mod walk;

/// A process to record: a Python with the pyusdt extension loaded, a
/// Python without it, or (the root of a recording that follows its
/// children) any other program.
#[derive(Debug, Clone)]
pub struct Target {
    /// The process id.
    pub pid: u32,
    /// The process's command name (`/proc/PID/comm`).
    pub comm: String,
    /// The extension's file as the process mapped it, if it runs pyusdt.
    pub extension: Option<PathBuf>,
}

impl Target {
    /// Process `pid` (command name `comm`), which runs no pyusdt.
    pub fn without_pyusdt(pid: u32, comm: String) -> Target {
        Target {
            pid,
            comm,
            extension: None,
        }
    }

    /// Whether it runs pyusdt (a recording with `--subprocesses` may start
    /// from a process that does not: a shell, whose Python children do).
    pub fn has_pyusdt(&self) -> bool {
        self.extension.is_some()
    }

    /// The extension's path as seen from here, through the target's root,
    /// so that it resolves even when the target runs in another mount
    /// namespace; what is asked of it (`what`) needs pyusdt where it has
    /// none.
    pub fn extension_path(&self, what: &str) -> Result<PathBuf> {
        match &self.extension {
            Some(e) => Ok(through_root(self.pid, &e.to_string_lossy())),
            None => Err(needs_pyusdt(what, self)),
        }
    }

    /// Whether the process still runs (an exited child that its parent
    /// has not reaped yet, a zombie, does not).
    pub fn alive(&self) -> bool {
        // Its main thread's stat, with the process's state: the process's
        // own sums every thread's times, costly at every tick of a
        // recording of a process of many threads.
        match fs::read_to_string(format!("/proc/{0}/task/{0}/stat", self.pid)) {
            // The state follows the command name, which ends with the
            // last ')'.
            Ok(stat) => !matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next()),
                Some('Z' | 'X') | None
            ),
            Err(_) => false,
        }
    }
}

/// A file a process maps: its path as `/proc/PID/maps` names it, its
/// device (major, minor) and inode, and where its first mapping starts
/// and at what offset in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapped {
    path: String,
    dev: (u32, u32),
    inode: u64,
    start: u64,
    offset: u64,
}

/// The files process `pid` maps, in the order of its memory map, each
/// once.
fn mapped(pid: u32) -> io::Result<Vec<Mapped>> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut files: Vec<Mapped> = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(offset), Some(dev), Some(inode), Some(path)) =
            (f.first(), f.get(2), f.get(3), f.get(4), f.get(5))
        else {
            continue;
        };
        if !path.starts_with('/') || files.iter().any(|m| m.path == *path) {
            continue;
        }
        let (major, minor) = dev.split_once(':').unwrap_or(("0", "0"));
        let hex = |s: &str| u32::from_str_radix(s, 16).unwrap_or(0);
        let hex64 = |s: &str| u64::from_str_radix(s, 16).unwrap_or(0);
        files.push(Mapped {
            path: path.to_string(),
            dev: (hex(major), hex(minor)),
            inode: inode.parse().unwrap_or(0),
            start: hex64(range.split_once('-').map_or(*range, |r| r.0)),
            offset: hex64(offset),
        });
    }
    Ok(files)
}

/// Whether `path` is the file of device `dev` and inode `inode`.
fn is_file(path: &std::path::Path, dev: (u32, u32), inode: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path)
        .is_ok_and(|m| (libc::major(m.dev()), libc::minor(m.dev())) == dev && m.ino() == inode)
}

/// `file`, a path process `pid` maps (as `/proc/PID/maps` names it), as
/// seen from here. In another mount namespace the maps name it from the
/// process's root, to be read through `/proc/PID/root`; in a chroot of
/// this namespace they name it from this process's root, as it is. The
/// one that is the very file mapped (device and inode) wins; through the
/// process's root where neither can be told.
pub fn through_root(pid: u32, file: &str) -> PathBuf {
    let rooted = PathBuf::from(format!("/proc/{pid}/root{file}"));
    let Some(m) = mapped(pid)
        .ok()
        .and_then(|ms| ms.into_iter().find(|m| m.path == file))
    else {
        return rooted;
    };
    [rooted.clone(), PathBuf::from(file)]
        .into_iter()
        .find(|p| is_file(p, m.dev, m.inode))
        .unwrap_or(rooted)
}

/// The files process `pid` maps, in the order of its memory map, each
/// once.
pub fn mapped_files(pid: u32) -> io::Result<Vec<String>> {
    Ok(mapped(pid)?.into_iter().map(|m| m.path).collect())
}

/// Whether a mapped file is the pyusdt extension module.
fn is_extension(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    path.contains("/pyusdt/") && file.starts_with("_native.") && file.ends_with(".so")
}

/// Whether a mapped file is a CPython interpreter or libpython.
fn is_python(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.starts_with("python") || file.starts_with("libpython")
}

/// What a process is, as far as recording it goes.
#[derive(Debug)]
pub enum Lookup {
    /// Python with pyusdt loaded: ready to record.
    Ready(Target),
    /// Python without pyusdt (yet: a program may import it later).
    WithoutPyusdt(String),
    /// Not Python.
    NotPython(String),
    /// No such process.
    Gone,
}

/// Looks at process `pid`'s command name and memory map.
pub fn lookup(pid: u32) -> Result<Lookup> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let comm = match fs::read_to_string(proc.join("comm")) {
        Ok(c) => c.trim_end().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Gone),
        Err(e) => return Err(e).with_context(|| format!("read /proc/{pid}/comm")),
    };
    let files = match mapped_files(pid) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Gone),
        Err(e) => {
            return Err(e).with_context(|| format!("read the memory map of process {pid} ({comm})"))
        }
    };
    let mut python = false;
    for path in &files {
        if is_extension(path) {
            return Ok(Lookup::Ready(Target {
                pid,
                comm,
                extension: Some(PathBuf::from(path)),
            }));
        }
        python |= is_python(path);
    }
    Ok(if python {
        Lookup::WithoutPyusdt(comm)
    } else {
        Lookup::NotPython(comm)
    })
}

/// Finds process `pid`, a Python program, with its pyusdt extension if it
/// has one (see [`derive`] for one without), or says plainly why not.
pub fn find(pid: u32) -> Result<Target> {
    match lookup(pid)? {
        Lookup::Ready(t) => Ok(t),
        Lookup::Gone => bail!("no process with PID {pid}"),
        Lookup::WithoutPyusdt(comm) => Ok(Target::without_pyusdt(pid, comm)),
        Lookup::NotPython(comm) => bail!("process {pid} ({comm}) is not a Python process"),
    }
}

/// What asking for `what` of `t`, which runs no pyusdt, says: how to load
/// it.
pub fn needs_pyusdt(what: &str, t: &Target) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} needs pyusdt in process {} ({}), which runs without it: start the program \
         with `python -m pyusdt app.py` (or `-m module`), or call \
         `import pyusdt; pyusdt.enable()` in it",
        t.pid,
        t.comm
    )
}

/// Process `pid` as the root of a recording that follows its children:
/// a pyusdt process, or any other (a shell, a Python without pyusdt),
/// whose own frames are then not recorded.
pub fn find_root(pid: u32) -> Result<Target> {
    match lookup(pid)? {
        Lookup::Ready(t) => Ok(t),
        Lookup::Gone => bail!("no process with PID {pid}"),
        Lookup::WithoutPyusdt(comm) | Lookup::NotPython(comm) => {
            Ok(Target::without_pyusdt(pid, comm))
        }
    }
}

/// The fields of a `/proc/.../stat` line after the command name (which
/// may hold spaces and parentheses): the state first, then the parent.
pub fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace().collect())
}

/// Every process that `pid` started, and theirs, with its parent:
/// parents before their children.
pub fn descendants(pid: u32) -> Vec<(u32, u32)> {
    let mut parent_of = std::collections::BTreeMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let ppid = fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| stat_fields(&s)?.get(1)?.parse::<u32>().ok());
        if let Some(pp) = ppid {
            parent_of.insert(p, pp);
        }
    }
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut level = vec![pid];
    while !level.is_empty() {
        let next: Vec<(u32, u32)> = parent_of
            .iter()
            .filter(|(p, pp)| level.contains(pp) && **p != pid && !out.iter().any(|o| o.0 == **p))
            .map(|(&p, &pp)| (p, pp))
            .collect();
        level = next.iter().map(|n| n.0).collect();
        out.extend(next);
    }
    out
}

/// The files of process `pid` that may hold its interpreter, as its maps
/// name them: libpython first, then python executables, then its
/// executable whatever its name (a program that embeds Python).
pub fn interpreter_files(pid: u32) -> Vec<String> {
    let mut files: Vec<String> = mapped_files(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| is_python(p))
        .collect();
    files.sort_by_key(|p| {
        !p.rsplit('/')
            .next()
            .is_some_and(|f| f.starts_with("libpython"))
    });
    if let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) {
        let exe = exe.to_string_lossy().into_owned();
        if !files.contains(&exe) {
            files.push(exe);
        }
    }
    files
}

/// The file that holds process `pid`'s interpreter (libpython, else the
/// python executable), as seen from here through the process's root.
pub fn interpreter_file(pid: u32) -> Option<PathBuf> {
    let files = interpreter_files(pid);
    let file = files.iter().find(|p| is_python(p))?;
    Some(through_root(pid, file))
}

/// Where process `pid` mapped the first byte of `file` (as its maps name
/// it).
pub fn load_address(pid: u32, file: &str) -> Option<u64> {
    mapped(pid)
        .ok()?
        .into_iter()
        .find(|m| m.path == file && m.offset == 0)
        .map(|m| m.start)
}

/// The thread ids of process `pid`, ascending (none once it is gone).
pub fn tasks(pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

/// Process `pid`'s command line, if it still runs.
pub fn command_line(pid: u32) -> Option<Vec<String>> {
    let b = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = b
        .split(|&c| c == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then_some(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_extension() {
        assert!(is_extension(
            "/v/lib/python3.12/site-packages/pyusdt/_native.cpython-312-x86_64-linux-gnu.so"
        ));
        assert!(!is_extension("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(!is_extension("/x/pyusdt/other.so"));
        assert!(is_python("/root/.pyenv/versions/3.12.1/bin/python3.12"));
        assert!(is_python("/usr/lib/libpython3.12.so.1.0"));
        assert!(!is_python("/usr/bin/bash"));
    }

    #[test]
    fn a_mapped_file_is_found_from_here() {
        // This process's own executable: the same file both ways.
        let exe = std::fs::read_link("/proc/self/exe").expect("the test's executable");
        let pid = std::process::id();
        let path = through_root(pid, &exe.to_string_lossy());
        assert_eq!(
            path,
            PathBuf::from(format!("/proc/{pid}/root{}", exe.display()))
        );
        let files = mapped(pid).expect("our own maps");
        let me = files.iter().find(|m| std::path::Path::new(&m.path) == exe);
        let me = me.expect("the executable is mapped");
        assert!(is_file(&exe, me.dev, me.inode));
        assert!(!is_file(std::path::Path::new("/"), me.dev, me.inode));
    }

    #[test]
    fn missing_pid_is_named() {
        let err = find(u32::MAX - 1).unwrap_err().to_string();
        assert_eq!(err, format!("no process with PID {}", u32::MAX - 1));
    }

    #[test]
    fn non_python_process_is_named() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let err = find(child.id()).unwrap_err().to_string();
        let _ = child.kill();
        let _ = child.wait();
        assert!(err.ends_with("is not a Python process"), "{err}");
    }
}
