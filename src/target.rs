//! Finding a target process and the pyusdt extension it has loaded.

use std::fs;
use std::io;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::Result;

/// A process that runs Python with the pyusdt extension loaded.
#[derive(Debug, Clone)]
pub struct Target {
    /// The process id.
    pub pid: u32,
    /// The process's command name (`/proc/PID/comm`).
    pub comm: String,
    /// The extension's file as the process mapped it.
    pub extension: PathBuf,
}

impl Target {
    /// The extension's path as seen from here, through the target's root,
    /// so that it resolves even when the target runs in another mount
    /// namespace.
    pub fn extension_path(&self) -> PathBuf {
        through_root(self.pid, &self.extension.to_string_lossy())
    }

    /// Whether the process still runs (an exited child that its parent
    /// has not reaped yet, a zombie, does not).
    pub fn alive(&self) -> bool {
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
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

/// `file`, a path in process `pid`'s view, as seen from here: through the
/// process's root, so that it resolves even in another mount namespace.
pub fn through_root(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{file}"))
}

/// The files process `pid` maps, in the order of its memory map, each
/// once.
pub fn mapped_files(pid: u32) -> io::Result<Vec<String>> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut files: Vec<String> = Vec::new();
    for p in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        if p.starts_with('/') && !files.iter().any(|f| f == p) {
            files.push(p.to_string());
        }
    }
    Ok(files)
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
                extension: PathBuf::from(path),
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

/// Finds process `pid` and its pyusdt extension, or says plainly why not.
pub fn find(pid: u32) -> Result<Target> {
    match lookup(pid)? {
        Lookup::Ready(t) => Ok(t),
        Lookup::Gone => bail!("no process with PID {pid}"),
        Lookup::WithoutPyusdt(comm) => bail!(
            "process {pid} ({comm}) runs Python without pyusdt: start it with \
             `python -m pyusdt app.py` (or `-m module`), or call \
             `import pyusdt; pyusdt.enable()` in it"
        ),
        Lookup::NotPython(comm) => bail!("process {pid} ({comm}) is not a Python process"),
    }
}

/// The file that holds process `pid`'s interpreter (libpython, else the
/// python executable), as seen from here through the process's root.
pub fn interpreter_file(pid: u32) -> Option<PathBuf> {
    let files: Vec<String> = mapped_files(pid)
        .ok()?
        .into_iter()
        .filter(|p| is_python(p))
        .collect();
    let file = files
        .iter()
        .find(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|f| f.starts_with("libpython"))
        })
        .or_else(|| files.first())?;
    Some(through_root(pid, file))
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
