//! `pyusdt-prof top`: a live view of a process's Python functions by CPU,
//! off-CPU and syscall time, refreshed in place (no clearing, so no
//! flicker, over ssh too), sortable from the keyboard.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::profile::frame::PyFrame;
use crate::profile::{Profile, ViewKind};
use crate::readers::report::{duration, python_frames, NO_PYTHON};
use crate::{errors, record, target, Result};

/// What a row of `top` weighs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Weights {
    /// CPU samples.
    pub cpu: u64,
    /// Nanoseconds off the CPU.
    pub offcpu: u64,
    /// Nanoseconds in syscalls.
    pub syscall: u64,
    /// Syscalls made.
    pub calls: u64,
}

impl Weights {
    fn minus(&self, o: &Weights) -> Weights {
        Weights {
            cpu: self.cpu.saturating_sub(o.cpu),
            offcpu: self.offcpu.saturating_sub(o.offcpu),
            syscall: self.syscall.saturating_sub(o.syscall),
            calls: self.calls.saturating_sub(o.calls),
        }
    }
}

/// The column rows are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// CPU time.
    Cpu,
    /// Time off the CPU.
    Offcpu,
    /// Time in syscalls.
    Syscall,
}

/// Per function, its self (innermost Python frame) or total (anywhere in
/// the stack) weights in a profile so far.
pub fn weights(p: &Profile, total: bool) -> HashMap<String, Weights> {
    let mut m: HashMap<String, Weights> = HashMap::new();
    for v in &p.views {
        for s in &v.samples {
            let py = python_frames(p, &s.stack);
            let mut names: Vec<&str> = if total {
                py.clone()
            } else {
                py.last().copied().into_iter().collect()
            };
            if names.is_empty() {
                names.push(NO_PYTHON);
            }
            names.sort_unstable();
            names.dedup();
            for n in names {
                let w = m.entry(n.to_string()).or_default();
                match v.kind {
                    ViewKind::Cpu => w.cpu += s.value,
                    ViewKind::Offcpu => w.offcpu += s.value,
                    ViewKind::Syscall => {
                        w.syscall += s.value;
                        w.calls += s.count;
                    }
                    _ => {}
                }
            }
        }
    }
    m
}

/// The live view's state.
#[derive(Debug)]
pub struct Top {
    /// Sort column.
    pub sort: Sort,
    /// Show totals since the start instead of the last interval.
    pub accumulate: bool,
    /// Weigh functions by total (inclusive) instead of self.
    pub inclusive: bool,
    /// The header's process line.
    pub title: String,
    /// CPU samples per second.
    pub hz: u64,
    /// The weights at the last refresh and the one before (self, total).
    now: [HashMap<String, Weights>; 2],
    before: [HashMap<String, Weights>; 2],
    /// How long between those two refreshes, and since the start.
    interval: Duration,
    elapsed: Duration,
}

impl Top {
    /// A view of a process described by `title`, sampled at `hz`.
    pub fn new(title: String, hz: u64) -> Top {
        Top {
            sort: Sort::Cpu,
            accumulate: false,
            inclusive: false,
            title,
            hz: hz.max(1),
            now: Default::default(),
            before: Default::default(),
            interval: Duration::ZERO,
            elapsed: Duration::ZERO,
        }
    }

    /// Takes a new profile of the recording so far.
    pub fn update(&mut self, p: &Profile, interval: Duration) {
        let next = [weights(p, false), weights(p, true)];
        self.before = std::mem::replace(&mut self.now, next);
        self.interval = interval;
        self.elapsed = Duration::from_nanos(p.duration_ns);
    }

    /// Handles a key; false for the one that quits.
    pub fn key(&mut self, k: u8) -> bool {
        match k {
            b'q' | b'Q' | 3 => return false,
            b'c' => self.sort = Sort::Cpu,
            b'o' => self.sort = Sort::Offcpu,
            b's' => self.sort = Sort::Syscall,
            b'a' => self.accumulate = !self.accumulate,
            b't' => self.inclusive = !self.inclusive,
            _ => {}
        }
        true
    }

    /// The screen: `height` lines of at most `width` characters.
    pub fn render(&self, width: usize, height: usize) -> Vec<String> {
        let i = usize::from(self.inclusive);
        let span = if self.accumulate {
            self.elapsed
        } else {
            self.interval
        };
        let mut rows: Vec<(&String, Weights)> = self.now[i]
            .iter()
            .map(|(f, w)| {
                let w = if self.accumulate {
                    *w
                } else {
                    w.minus(self.before[i].get(f).unwrap_or(&Weights::default()))
                };
                (f, w)
            })
            .filter(|(_, w)| *w != Weights::default())
            .collect();
        let key = |w: &Weights| match self.sort {
            Sort::Cpu => w.cpu,
            Sort::Offcpu => w.offcpu,
            Sort::Syscall => w.syscall,
        };
        rows.sort_by(|a, b| key(&b.1).cmp(&key(&a.1)).then_with(|| a.0.cmp(b.0)));
        let sort = match self.sort {
            Sort::Cpu => "CPU",
            Sort::Offcpu => "off-CPU",
            Sort::Syscall => "syscall",
        };
        let mut out = vec![
            self.title.clone(),
            format!(
                "{} {:.1} s, {} time, sorted by {sort}   keys: c/o/s sort, a {}, t {}, q quit",
                if self.accumulate {
                    "total over"
                } else {
                    "last"
                },
                span.as_secs_f64(),
                if self.inclusive { "total" } else { "self" },
                if self.accumulate {
                    "per interval"
                } else {
                    "since start"
                },
                if self.inclusive { "self" } else { "total" },
            ),
            String::new(),
            format!(
                "{:>6} {:>9} {:>9} {:>9} {:>7}  FUNCTION",
                "CPU%", "CPU", "OFF-CPU", "SYSCALL", "CALLS"
            ),
        ];
        let secs = span.as_secs_f64().max(1e-9);
        let time = |ns: u64| {
            if ns == 0 {
                "-".to_string()
            } else {
                duration(ns)
            }
        };
        for (f, w) in rows.into_iter().take(height.saturating_sub(out.len())) {
            let cpu_ns = w.cpu * 1_000_000_000 / self.hz;
            out.push(format!(
                "{:>5.1}% {:>9} {:>9} {:>9} {:>7}  {}",
                100.0 * cpu_ns as f64 / 1e9 / secs,
                time(cpu_ns),
                time(w.offcpu),
                time(w.syscall),
                w.calls,
                PyFrame::short(f)
            ));
        }
        out.truncate(height);
        out.into_iter()
            .map(|l| l.chars().take(width).collect())
            .collect()
    }
}

/// The terminal in raw mode on the alternate screen while it lives.
pub struct Screen {
    saved: libc::termios,
    out: std::io::Stdout,
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Screen")
    }
}

impl Screen {
    /// Takes over the terminal, or says why it cannot.
    pub fn open() -> Result<Screen> {
        let (stdin, out) = (std::io::stdin(), std::io::stdout());
        if !stdin.is_terminal() || !out.is_terminal() {
            bail!("top needs a terminal; for a file, use `record` then `report`");
        }
        let fd = stdin.as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it for a terminal.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is a terminal and `saved` is valid for writing.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error()).context("read the terminal's mode");
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_cc[libc::VMIN] = 0;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: as above, with a mode derived from the terminal's own.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error()).context("set the terminal's mode");
        }
        let mut s = Screen { saved, out };
        // The alternate screen, cleared once; the cursor hidden.
        s.write("\x1b[?1049h\x1b[2J\x1b[?25l")?;
        Ok(s)
    }

    fn write(&mut self, text: &str) -> Result<()> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .context("write to the terminal")
    }

    /// The terminal's (columns, rows).
    pub fn size(&self) -> (usize, usize) {
        // SAFETY: winsize is plain data that TIOCGWINSZ fills.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a valid winsize to fill.
        let ok = unsafe { libc::ioctl(self.out.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
        if ok && ws.ws_col > 0 && ws.ws_row > 0 {
            (usize::from(ws.ws_col), usize::from(ws.ws_row))
        } else {
            (80, 24)
        }
    }

    /// Draws `lines` over the last frame: each line then the rest of its
    /// row erased, then everything below; nothing is cleared first.
    pub fn draw(&mut self, lines: &[String]) -> Result<()> {
        let mut frame = String::from("\x1b[H");
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                frame.push_str("\r\n");
            }
            frame.push_str(l);
            frame.push_str("\x1b[K");
        }
        frame.push_str("\x1b[J");
        self.write(&frame)
    }

    /// Keys pressed since the last call.
    pub fn keys(&mut self) -> Vec<u8> {
        let mut buf = [0u8; 64];
        match std::io::stdin().read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.write("\x1b[?25h\x1b[?1049l");
        // SAFETY: restores the mode read in `open` on the same terminal.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

/// Refreshes `top` from the recording every `every`; handles keys on each
/// tick. Returns false when the user quits.
#[derive(Debug)]
pub struct Driver {
    /// The view.
    pub top: Top,
    /// The terminal.
    pub screen: Screen,
    every: Duration,
    last: Option<Instant>,
}

impl Driver {
    /// Drives `top` on `screen`, refreshing every `every`.
    pub fn new(top: Top, screen: Screen, every: Duration) -> Driver {
        Driver {
            top,
            screen,
            every,
            last: None,
        }
    }

    /// One tick of the recorder: keys, and a refresh when one is due.
    pub fn tick(&mut self, snapshot: &mut dyn FnMut() -> Result<Profile>) -> Result<bool> {
        let mut redraw = false;
        for k in self.screen.keys() {
            if !self.top.key(k) {
                return Ok(false);
            }
            redraw = true;
        }
        let due = self.last.is_none_or(|t| t.elapsed() >= self.every);
        if due {
            let interval = self.last.map_or(Duration::ZERO, |t| t.elapsed());
            self.last = Some(Instant::now());
            self.top.update(&snapshot()?, interval);
            redraw = true;
        }
        if redraw {
            let (w, h) = self.screen.size();
            let lines = self.top.render(w, h);
            self.screen.draw(&lines)?;
        }
        Ok(true)
    }
}

/// `pyusdt-prof top -p PID`: records process `pid`'s cpu, offcpu and
/// syscall views (off-CPU waits shorter than `sample_below_ns` sampled)
/// and draws them in place every `interval` until `q`, `stop`, or the
/// process exits.
pub fn run(
    pid: u32,
    freq: u64,
    interval: Duration,
    sample_below_ns: u64,
    stop: &AtomicBool,
) -> Result<()> {
    errors::check_can_trace()?;
    let t = target::find(pid)?;
    let screen = Screen::open()?;
    let opts = record::Options {
        views: [ViewKind::Cpu, ViewKind::Offcpu, ViewKind::Syscall]
            .into_iter()
            .collect(),
        freq,
        duration: None,
        subprocesses: false,
        lines: false,
        span: None,
        attached: true,
        gil_probes: false,
        sample_waits_below_ns: sample_below_ns,
        stacks_at: Default::default(),
    };
    let mut title = format!(
        "pyusdt-prof top: process {} ({})",
        t.pid,
        crate::profile::short_command(
            &target::command_line(t.pid).unwrap_or_else(|| vec![t.comm.clone()])
        )
    );
    if sample_below_ns > 0 {
        title.push_str(&format!(
            "; off-CPU waits under {} sampled",
            duration(sample_below_ns)
        ));
    }
    let mut driver = Driver::new(Top::new(title, freq), screen, interval);
    let mut failed = None;
    let result = record::record(
        &t,
        &opts,
        stop,
        || {},
        |_, snapshot| match driver.tick(snapshot) {
            Ok(true) => {}
            Ok(false) => stop.store(true, Ordering::Relaxed),
            Err(e) => {
                failed = Some(e);
                stop.store(true, Ordering::Relaxed);
            }
        },
    );
    drop(driver);
    if let Some(e) = failed {
        return Err(e);
    }
    result?;
    if !t.alive() {
        eprintln!("pyusdt-prof: process {} exited", t.pid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Sample, Unit, View, FORMAT, VERSION};
    use std::collections::BTreeMap;

    fn profile(heavy: u64, light: u64, slept: u64) -> Profile {
        let s = |stack: Vec<u32>, value| Sample {
            pid: 0,
            tid: 1,
            stack,
            value,
            count: 1,
            hist: Vec::new(),
        };
        Profile {
            format: FORMAT.into(),
            version: VERSION,
            pid: 1,
            command: vec!["python".into()],
            python: "3.12.1".into(),
            start_unix_ns: 0,
            duration_ns: 2_000_000_000,
            sample_hz: 100,
            threads: BTreeMap::new(),
            python_threads: BTreeMap::new(),
            processes: BTreeMap::new(),
            function_of: Vec::new(),
            frames: vec![
                "main (/a/app.py:1)".into(),
                "heavy (/a/app.py:5)".into(),
                "light (/a/app.py:9)".into(),
                "nap (/a/app.py:12)".into(),
            ],
            views: vec![
                View {
                    kind: ViewKind::Cpu,
                    unit: Unit::Samples,
                    events: 0,
                    lost: 0,
                    unavailable: None,
                    notes: Vec::new(),
                    sampled_below_ns: None,
                    samples: vec![s(vec![0, 1], heavy), s(vec![0, 2], light)],
                },
                View {
                    kind: ViewKind::Offcpu,
                    unit: Unit::Nanoseconds,
                    events: 0,
                    lost: 0,
                    unavailable: None,
                    notes: Vec::new(),
                    sampled_below_ns: None,
                    samples: vec![s(vec![0, 3], slept)],
                },
            ],
            walk_errors: BTreeMap::new(),
            span: None,
            kernel: String::new(),
        }
    }

    #[test]
    fn shows_the_last_interval_sorted_and_fits() {
        let mut t = Top::new("pyusdt-prof top: process 1".into(), 100);
        t.update(&profile(100, 50, 0), Duration::from_secs(1));
        t.update(&profile(175, 75, 500_000_000), Duration::from_secs(1));
        let screen = t.render(60, 10);
        assert!(screen.iter().all(|l| l.chars().count() <= 60));
        assert!(screen[4].contains("heavy (app.py:"), "{screen:#?}");
        assert!(
            screen[4].starts_with(" 75.0%    750 ms         -"),
            "{screen:#?}"
        );
        assert!(screen[5].contains("light (app.py:"), "{screen:#?}");
        assert!(t.key(b'o'));
        let screen = t.render(80, 10);
        assert!(screen[1].contains("sorted by off-CPU"));
        assert!(screen[4].contains("nap (app.py:12)"), "{screen:#?}");
        assert!(t.key(b't'));
        let screen = t.render(80, 10);
        assert!(screen[4].contains("main (app.py:1)"), "{screen:#?}");
        assert!(!t.key(b'q'));
    }
}
