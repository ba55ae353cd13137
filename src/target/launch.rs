//! Launching a program to record from its first line: `record -- CMD`.
//! `python -m pyusdt` waits, before the program's first line, for a byte
//! on the pipe that `PYUSDT_START_FD` names; the recorder sends it once
//! everything is attached.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::target::{self, derive, Lookup, Target};
use crate::Result;

/// A launched program, held until everything is attached.
#[derive(Debug)]
pub struct Launched {
    child: Child,
    go: Option<OwnedFd>,
    /// A Python without pyusdt, stopped (SIGSTOP) since its interpreter
    /// started: it goes on (SIGCONT) at [`go`](Self::go).
    stopped: bool,
}

impl Launched {
    /// Starts `cmd` with PYUSDT_START_FD naming the read end of a pipe:
    /// `python -m pyusdt` waits on it before the program's first line
    /// (if PYUSDT_RECORDER, this process, is its parent: not a Python that
    /// the program runs in turn).
    /// With `follow`, PYUSDT_FOLLOWED_BY names this process: a Python
    /// program among the children waits until its layout is read.
    pub fn start(cmd: &[String], follow: bool) -> Result<Launched> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("create the start pipe");
        }
        // SAFETY: both descriptors are new and ours alone.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let rfd = r.as_raw_fd();
        let mut command = std::process::Command::new(&cmd[0]);
        command
            .args(&cmd[1..])
            .env("PYUSDT_START_FD", rfd.to_string())
            .env("PYUSDT_RECORDER", std::process::id().to_string());
        if follow {
            command.env("PYUSDT_FOLLOWED_BY", std::process::id().to_string());
        }
        // SAFETY: between fork and exec only async-signal-safe calls:
        // fcntl clears close-on-exec so that the child inherits the read end.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(rfd, libc::F_SETFD, 0) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", cmd[0]))?;
        drop(r);
        Ok(Launched {
            child,
            go: Some(w),
            stopped: false,
        })
    }

    /// Waits until the program has loaded pyusdt (or exited). A Python
    /// program run without `-m pyusdt` is stopped as soon as its
    /// interpreter has started (its layout can be found then), until
    /// [`go`](Self::go), which is what pyusdt's handshake does; with
    /// `follow`, a program that is not Python (a shell that starts Python
    /// programs) is taken as it is.
    pub fn target(&mut self, follow: bool) -> Result<Target> {
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(10);
        loop {
            match target::lookup(pid) {
                Ok(Lookup::Ready(t)) => return Ok(t),
                Ok(Lookup::WithoutPyusdt(_)) if !runs_pyusdt(pid) => {
                    if !matches!(derive::derive(pid), Ok(None)) {
                        // SAFETY: a signal to our own child, not reaped
                        // yet (try_wait below reaps it only once it exits).
                        self.stopped = unsafe { libc::kill(pid as i32, libc::SIGSTOP) } == 0;
                        return target::find(pid);
                    }
                    pause = Duration::from_micros(500);
                }
                Ok(Lookup::NotPython(_)) if follow => return target::find_root(pid),
                Ok(_) | Err(_) => {}
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the program exited ({status}) before it loaded pyusdt");
            }
            if Instant::now() > deadline {
                let why = target::find(pid)
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("no pyusdt"));
                return Err(why.context("the program did not load pyusdt within 60s"));
            }
            std::thread::sleep(pause);
        }
    }

    /// Lets the program start.
    pub fn go(&mut self) {
        if let Some(w) = self.go.take() {
            // SAFETY: writing one byte from a live buffer to our own fd.
            let _ = unsafe { libc::write(w.as_raw_fd(), b"g".as_ptr().cast(), 1) };
        }
        if std::mem::take(&mut self.stopped) {
            // SAFETY: a signal to our own child, which we have not reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        }
    }

    /// Waits for the program; its exit code as ours.
    pub fn finish(mut self) -> Result<u8> {
        self.go();
        let status = self.child.wait().context("wait for the program")?;
        Ok(exit_code(status))
    }

    /// The program's exit code if it has exited, else None (it goes on).
    pub fn exited(&mut self) -> Result<Option<u8>> {
        self.go();
        Ok(self
            .child
            .try_wait()
            .context("ask whether the program exited")?
            .map(exit_code))
    }

    /// The program's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A shell's exit code for `status`: the code, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128u8.wrapping_add(s as u8),
        _ => 1,
    }
}

/// Whether process `pid` runs `python -m pyusdt` (whose handshake holds
/// the program until the recorder is attached).
fn runs_pyusdt(pid: u32) -> bool {
    let args = target::command_line(pid).unwrap_or_default();
    args.iter().any(|a| a == "-mpyusdt")
        || args.windows(2).any(|w| w[0] == "-m" && w[1] == "pyusdt")
}
