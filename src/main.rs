//! The `pyusdt-prof` command line.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use pyusdt_prof::flame::{self, FlameOptions};
use pyusdt_prof::profile::write_atomic;
use pyusdt_prof::profile::{Profile, Unit, ViewKind};
use pyusdt_prof::record::{self, Progress};
use pyusdt_prof::{errors, export, layout, report, target, top, trace, usdt, Result};

/// The profile file `record` writes and the other commands read by default.
const DEFAULT_PROFILE: &str = "pyusdt-profile.json";

/// A profiler for Python on Linux: Python frames with CPU, off-CPU,
/// syscall, wake-up and GIL time, per thread.
///
/// The program to profile runs with the pyusdt extension loaded:
/// `python -m pyusdt app.py` (or `-m module`), or `import pyusdt;
/// pyusdt.enable()` inside it. pyusdt-prof needs root (or CAP_BPF,
/// CAP_PERFMON and CAP_SYS_PTRACE).
///
/// Examples:
///
///   sudo pyusdt-prof record -d 10 -p 4242
///
///   sudo pyusdt-prof record -- python -m pyusdt app.py
///
///   pyusdt-prof report                       # top functions, syscalls, histograms
///
///   pyusdt-prof flame --view offcpu          # -> pyusdt-profile-offcpu.svg
///
///   pyusdt-prof diff before.json after.json  # what changed
///
///   pyusdt-prof export --format speedscope   # for speedscope, Perfetto, pprof
///
///   sudo pyusdt-prof top -p 4242             # live
///
///   sudo pyusdt-prof trace -p 4242 'myapp:*' --stacks   # each probe hit
#[derive(Debug, Parser)]
#[command(version, propagate_version = true, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Record a Python process: CPU samples, off-CPU time, syscalls and
    /// wake-ups, each under the Python frames of each thread.
    ///
    /// Attach to a running process with -p, or launch one after `--`
    /// (usually `python -m pyusdt app.py`): a launched program starts only
    /// once everything is attached, so nothing it does is missed, and its
    /// exit code is passed on. Recording ends after -d, at Ctrl-C, or when
    /// the process exits. Nothing runs per Python call: frames are read
    /// only when an event happens.
    ///
    /// Views, what they weigh, and what they cost the program (measured
    /// with `make bench`, bench/RESULTS.md; each walks the thread's Python
    /// frames per event, a few microseconds):
    ///
    ///   cpu      samples at -F Hz; ~10 us per sample: unmeasurable on
    ///            pyperformance, http.server 1.06x. The default.
    ///   offcpu   time blocked or waiting for a CPU, with the kernel stack;
    ///            ~5 us per context switch: http.server 1.27x slower.
    ///   wakeup   time waited, under the thread and frames that woke it;
    ///            ~3 us per wake-up: http.server 1.35x.
    ///   syscall  time inside each syscall, and calls; ~3 us per syscall:
    ///            1-byte writes 10x, http.server 1.46x.
    ///   gil      time waiting for the GIL, under the thread that held it;
    ///            uprobes per GIL hand-over and release: 1-byte writes 26x.
    ///            With it, cpu samples of waiting threads end in
    ///            `[waiting for the GIL]`.
    ///   all      every view above.
    ///   calls    every Python call and return (with --exact, Python
    ///            3.12+): exact call counts, inclusive and self time per
    ///            call path. ~135 ns per call (two sys.monitoring
    ///            callbacks, batched into the kernel): fib 5.4x slower
    ///            (cProfile 6.4x, bpftrace on PY_START/PY_RETURN 32x).
    ///
    /// Only cpu is on by default: the others cost the realistic workloads
    /// more than the 3-5% a profiler attached to a live service may take;
    /// ask for them where that price is worth paying.
    ///
    /// Examples:
    ///
    ///   sudo pyusdt-prof record -p 4242 -d 30
    ///
    ///   sudo pyusdt-prof record --views all -- python -m pyusdt app.py
    ///
    ///   sudo pyusdt-prof record --views cpu,syscall -F 499 -o app.json -- python -m pyusdt app.py
    ///
    ///   sudo pyusdt-prof record --subprocesses -- python -m pyusdt prefork_server.py
    ///
    ///   sudo pyusdt-prof record --exact -- python -m pyusdt batch_job.py
    ///
    ///   sudo pyusdt-prof record --views cpu,syscall --span handle_request -p 4242
    #[command(verbatim_doc_comment)]
    Record {
        /// The process id of a Python program that runs pyusdt.
        #[arg(
            short,
            long,
            required_unless_present = "command",
            conflicts_with = "command"
        )]
        pid: Option<u32>,
        /// Where to write the profile.
        #[arg(short, long, default_value = DEFAULT_PROFILE)]
        output: PathBuf,
        /// Stop after this many seconds.
        #[arg(short, long, value_parser = parse_seconds)]
        duration: Option<f64>,
        /// CPU samples per second, per CPU.
        #[arg(short = 'F', long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        freq: u64,
        /// The views to record, comma-separated, or all.
        #[arg(long, value_delimiter = ',', default_value = "cpu", value_parser = parse_view_or_all)]
        views: Vec<Vec<ViewKind>>,
        /// Record the processes the target starts too (fork, and exec of
        /// a new program), each under its own `process CMD (PID)` root.
        /// Forked children are recorded from their first instruction; a
        /// program they exec is, once it loads pyusdt (`python -m pyusdt`).
        /// Recording then ends when every recorded process has exited.
        #[arg(long)]
        subprocesses: bool,
        /// Name each Python frame by the line it is at, `qualname
        /// (file:line)`, not by its function (`qualname (file:firstline)`);
        /// the readers' --functions folds lines back into functions.
        #[arg(long)]
        lines: bool,
        /// Record only what threads do inside span NAME: the blocks and
        /// functions of `with pyusdt.span(NAME):` / `@pyusdt.span(NAME)`
        /// (while a thread is in one); the profile and `report` add the
        /// spans' count and a histogram of how long they lasted.
        #[arg(long, value_name = "NAME")]
        span: Option<String>,
        /// Also record every Python call and return (the calls view;
        /// Python 3.12+): exact call counts and exact inclusive and self
        /// time per function and call path, kept in the kernel. Slows
        /// call-heavy code many times over; the other views cost nothing
        /// per call.
        #[arg(long)]
        exact: bool,
        /// The command to launch and record (after `--`).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print a view's folded stacks: `root;...;leaf value`, one per line.
    ///
    /// The root is `thread NAME (TID)`, then Python frames as
    /// `qualname (file:firstline)`, then `syscall:NAME` or kernel frames
    /// ending in `_[k]`. Values are nanoseconds for time views, samples for
    /// cpu, and calls for the syscall view with --count.
    ///
    /// Example:
    ///
    ///   pyusdt-prof fold --view syscall --count | sort -k2 -n | tail
    #[command(verbatim_doc_comment)]
    Fold {
        /// The profile to read.
        #[arg(short, long, default_value = DEFAULT_PROFILE)]
        input: PathBuf,
        /// The view to fold.
        #[arg(long, default_value = "cpu", value_parser = parse_view)]
        view: ViewKind,
        /// Weigh stacks by how many events they hold, not by time.
        #[arg(long)]
        count: bool,
        /// One tree for all threads, without the thread roots.
        #[arg(long)]
        merge_threads: bool,
        /// For a profile recorded with --lines: name frames by function,
        /// not line.
        #[arg(long)]
        functions: bool,
    },
    /// Draw a view as a flamegraph SVG.
    ///
    /// Examples:
    ///
    ///   pyusdt-prof flame                    # cpu view of pyusdt-profile.json
    ///
    ///   pyusdt-prof flame offcpu.svg --view offcpu -i app.json
    #[command(verbatim_doc_comment)]
    Flame {
        /// The SVG to write (default: the profile's name with the view).
        out: Option<PathBuf>,
        /// The profile to read.
        #[arg(short, long, default_value = DEFAULT_PROFILE)]
        input: PathBuf,
        /// The view to draw.
        #[arg(long, default_value = "cpu", value_parser = parse_view)]
        view: ViewKind,
        /// One tree for all threads, without the thread roots.
        #[arg(long)]
        merge_threads: bool,
        /// For a profile recorded with --lines: name frames by function,
        /// not line.
        #[arg(long)]
        functions: bool,
    },
    /// A live view of a running program's Python functions: CPU, off-CPU
    /// and syscall time, refreshed in place.
    ///
    /// Shows each function's self time (where it is the innermost Python
    /// frame) over the last interval. Keys: c, o, s sort by CPU, off-CPU or
    /// syscall time; a toggles totals since the start; t toggles total
    /// (inclusive) time; q quits. Works in any terminal, over ssh too.
    ///
    /// Example:
    ///
    ///   sudo pyusdt-prof top -p 4242
    #[command(verbatim_doc_comment)]
    Top {
        /// The process id of a Python program that runs pyusdt.
        #[arg(short, long)]
        pid: u32,
        /// CPU samples per second, per CPU.
        #[arg(short = 'F', long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        freq: u64,
        /// Seconds between refreshes.
        #[arg(short, long, default_value_t = 1.0, value_parser = parse_seconds)]
        interval: f64,
    },
    /// Print the numbers behind the flamegraphs: top functions, syscall
    /// tables and latency histograms.
    ///
    /// For each view, the Python functions with the most self weight
    /// (where they are the innermost Python frame) and total weight
    /// (anywhere in the stack). The syscall view adds, per function, its
    /// syscalls with calls, total, mean, p50 and p99; the syscall and offcpu
    /// views add log2 histograms of durations per function, as bcc's tools
    /// print them. Threads are merged unless --thread or --per-thread.
    /// --format json prints the same as one JSON document (see the README
    /// for its fields).
    ///
    /// Examples:
    ///
    ///   pyusdt-prof report
    ///
    ///   pyusdt-prof report --view syscall --thread worker-1 --limit 5
    ///
    ///   pyusdt-prof report --format json | jq '.sections[0].functions[0]'
    #[command(verbatim_doc_comment)]
    Report {
        /// The profile to read.
        #[arg(short, long, default_value = DEFAULT_PROFILE)]
        input: PathBuf,
        /// The views to report (repeat, or comma-separate; default: all).
        #[arg(long, value_delimiter = ',', value_parser = parse_view)]
        view: Vec<ViewKind>,
        /// Only the threads with this name, or this thread id.
        #[arg(short, long)]
        thread: Option<String>,
        /// One section per thread instead of all threads merged.
        #[arg(long)]
        per_thread: bool,
        /// Rows per table (histograms: at most 5).
        #[arg(short = 'n', long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
        /// text or json.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
        /// For a profile recorded with --lines: name frames by function,
        /// not line.
        #[arg(long)]
        functions: bool,
    },
    /// Convert a profile for other tools: speedscope, Perfetto or
    /// chrome://tracing (Chrome's Trace Event format), pprof, or folded
    /// stacks.
    ///
    /// speedscope gets one profile per view and thread; the Chrome trace one
    /// process per view with a track per thread, each thread's stacks
    /// merged and laid end to end (a profile holds totals, not times);
    /// pprof one sample type per view, with thread labels. Folded stacks
    /// hold one view (--view).
    ///
    /// Examples:
    ///
    ///   pyusdt-prof export --format speedscope     # -> pyusdt-profile.speedscope.json
    ///
    ///   pyusdt-prof export --format pprof -o app.pb.gz && go tool pprof -top app.pb.gz
    ///
    ///   pyusdt-prof export --format chrome --view cpu --view offcpu -o trace.json
    #[command(verbatim_doc_comment)]
    Export {
        /// The profile to read.
        #[arg(short, long, default_value = DEFAULT_PROFILE)]
        input: PathBuf,
        /// speedscope, chrome, pprof or folded.
        #[arg(short, long, value_parser = parse_format)]
        format: export::Format,
        /// Where to write (default: the profile's name with the format's
        /// extension).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The views to export (repeat, or comma-separate; default: all;
        /// folded: cpu).
        #[arg(long, value_delimiter = ',', value_parser = parse_view)]
        view: Vec<ViewKind>,
        /// For a profile recorded with --lines: name frames by function,
        /// not line.
        #[arg(long)]
        functions: bool,
    },
    /// Draw a differential flamegraph of two profiles: the shape of AFTER,
    /// red where a frame grew since BEFORE and blue where it shrank.
    ///
    /// Threads are merged (two recordings have different thread ids).
    /// Compare recordings of equal length, or use --normalize.
    ///
    /// Example:
    ///
    ///   pyusdt-prof diff before.json after.json -o diff.svg --view cpu
    #[command(verbatim_doc_comment)]
    Diff {
        /// The earlier profile.
        before: PathBuf,
        /// The later profile.
        after: PathBuf,
        /// The SVG to write.
        #[arg(short, long, default_value = "pyusdt-diff.svg")]
        output: PathBuf,
        /// The view to compare.
        #[arg(long, default_value = "cpu", value_parser = parse_view)]
        view: ViewKind,
        /// Scale BEFORE to AFTER's total first.
        #[arg(long)]
        normalize: bool,
        /// For a profile recorded with --lines: name frames by function,
        /// not line.
        #[arg(long)]
        functions: bool,
    },
    /// List the USDT probes a process carries: pyusdt's, and those of every
    /// other file it maps (the interpreter's own, libraries').
    ///
    /// Example:
    ///
    ///   pyusdt-prof list -p 4242
    #[command(verbatim_doc_comment)]
    List {
        /// The process id.
        #[arg(short, long)]
        pid: u32,
    },
    /// Print each hit of USDT probes of a running process, and its
    /// syscalls, one line each as they happen, like bcc's trace.
    ///
    /// PROBE is `provider:name`, `name` (any provider), either with `*`
    /// globs, and optionally the argument types: `provider:name(int,str)`.
    /// Without types, they come from the probe's file (pyusdt's
    /// app-defined probes list theirs in a `.pyusdt.argtypes` section),
    /// from pyusdt's own table for its probes (PY_START, span_begin, ...),
    /// else every argument is an integer. `pyusdt-prof list -p PID` shows
    /// what a process carries.
    ///
    /// Each line: seconds since the trace began, the thread `NAME (TID)`,
    /// `provider:name` and the arguments (strings quoted); a syscall as
    /// `syscall:NAME = RET <SECONDS>` (its entry time, its return value
    /// and how long it took). With --stacks, the thread's Python stack
    /// follows on indented lines, leaf first. --json prints one JSON object
    /// per line instead. Ends at Ctrl-C, after -d, or when the process
    /// exits, with a summary (events, lost) on stderr.
    ///
    /// pyusdt's per-call probes (PY_START, ...) fire on Python 3.12 and
    /// later, and cost a trap into the kernel per call while traced.
    ///
    /// Examples:
    ///
    ///   sudo pyusdt-prof trace -p 4242 pyusdt:PY_START
    ///
    ///   sudo pyusdt-prof trace -p 4242 'myapp:*' --stacks
    ///
    ///   sudo pyusdt-prof trace -p 4242 --syscalls write,fsync --stacks -d 10
    ///
    ///   sudo pyusdt-prof trace -p 4242 'pyusdt:span_*' --json | jq -c .args
    #[command(verbatim_doc_comment)]
    Trace {
        /// The process id.
        #[arg(short, long)]
        pid: u32,
        /// The probes to trace.
        #[arg(value_name = "PROBE", value_parser = parse_probe_spec)]
        probes: Vec<trace::ProbeSpec>,
        /// Trace syscalls too: every one, or these (comma-separated names).
        /// Put PROBEs before it, or write --syscalls=NAMES.
        #[arg(long, value_name = "NAME", num_args = 0..=1, value_delimiter = ',', value_parser = parse_syscall)]
        syscalls: Option<Vec<String>>,
        /// Print each event's Python stack (needs pyusdt in the process).
        #[arg(long)]
        stacks: bool,
        /// Stop after this many seconds.
        #[arg(short, long, value_parser = parse_seconds)]
        duration: Option<f64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print the interpreter layout that a pyusdt process announces.
    ///
    /// Attaches a BPF program to the process's `pyusdt:layout` probe and
    /// prints what it announces: the interpreter version, where its thread
    /// list and GIL are, and the offsets a BPF program uses to walk its
    /// frames. A quick check that a process can be profiled.
    ///
    /// Examples:
    ///
    ///   pyusdt-prof layout -p 4242
    ///
    ///   pyusdt-prof layout -p "$(pgrep -f 'pyusdt app.py')" --json
    #[command(verbatim_doc_comment)]
    Layout {
        /// The process id of a Python program that runs pyusdt.
        #[arg(short, long)]
        pid: u32,
        /// Print every field as JSON.
        #[arg(long)]
        json: bool,
        /// How long to wait for the announcement, in seconds.
        #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
        timeout: f64,
    },
}

fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 86_400.0 => Ok(t),
        _ => Err(format!("`{s}` is not a number of seconds from 0 to 86400")),
    }
}

fn parse_probe_spec(s: &str) -> std::result::Result<trace::ProbeSpec, String> {
    s.parse()
}

fn parse_syscall(s: &str) -> std::result::Result<String, String> {
    match trace::syscall_numbers(&[s.to_string()]) {
        Ok(_) => Ok(s.to_string()),
        Err(_) if s.contains(':') => Err(format!(
            "`{s}` is not a syscall (a probe? put probes before --syscalls, or write \
             --syscalls=NAMES)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_format(s: &str) -> std::result::Result<export::Format, String> {
    export::Format::parse(s).ok_or_else(|| {
        let names: Vec<_> = export::Format::ALL.iter().map(|(n, _)| *n).collect();
        format!(
            "`{s}` is not a format; the formats are {}",
            names.join(", ")
        )
    })
}

fn parse_view_or_all(s: &str) -> std::result::Result<Vec<ViewKind>, String> {
    if s == "all" {
        return Ok(ViewKind::SAMPLED.to_vec());
    }
    parse_view(s)
        .map(|v| vec![v])
        .map_err(|e| format!("{e}, or all"))
}

fn parse_view(s: &str) -> std::result::Result<ViewKind, String> {
    ViewKind::parse(s).ok_or_else(|| {
        let names: Vec<_> = ViewKind::ALL.iter().map(|v| v.name()).collect();
        format!("`{s}` is not a view; the views are {}", names.join(", "))
    })
}

/// Set by SIGINT and SIGTERM: stop recording and write what we have.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// A launched program, held until everything is attached.
struct Launched {
    child: Child,
    go: Option<OwnedFd>,
}

impl Launched {
    /// Starts `cmd` with PYUSDT_START_FD naming the read end of a pipe:
    /// `python -m pyusdt` waits on it before the program's first line.
    fn start(cmd: &[String]) -> Result<Launched> {
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
            .env("PYUSDT_START_FD", rfd.to_string());
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
        Ok(Launched { child, go: Some(w) })
    }

    /// Waits until the program has loaded pyusdt (or exited).
    fn target(&mut self) -> Result<target::Target> {
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match target::find(pid) {
                Ok(t) => return Ok(t),
                Err(e) => {
                    if let Some(status) = self.child.try_wait()? {
                        bail!("the program exited ({status}) before it loaded pyusdt");
                    }
                    if Instant::now() > deadline {
                        return Err(e.context("the program did not load pyusdt within 60s"));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets the program start.
    fn go(&mut self) {
        if let Some(w) = self.go.take() {
            // SAFETY: writing one byte from a live buffer to our own fd.
            let _ = unsafe { libc::write(w.as_raw_fd(), b"g".as_ptr().cast(), 1) };
        }
    }

    /// Waits for the program; its exit code as ours.
    fn finish(mut self) -> Result<u8> {
        self.go();
        let status = self.child.wait().context("wait for the program")?;
        Ok(match (status.code(), status.signal()) {
            (Some(c), _) => c as u8,
            (None, Some(s)) => 128u8.wrapping_add(s as u8),
            _ => 1,
        })
    }
}

fn progress_line(p: &Progress) -> String {
    let mut s = format!("recording {:.1}s", p.elapsed.as_secs_f64());
    for (v, n) in &p.events {
        s.push_str(&format!("  {} {n}", v.name()));
    }
    s.push_str(&format!("  lost {}", p.lost));
    if p.processes > 1 {
        s.push_str(&format!("  processes {}", p.processes));
    }
    s
}

fn record_cmd(
    pid: Option<u32>,
    output: PathBuf,
    opts: record::Options,
    command: Vec<String>,
) -> Result<u8> {
    errors::check_can_trace()?;
    // Refuse an unwritable output before recording anything.
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Err(e) => bail!("cannot write {}: {}: {e}", output.display(), dir.display()),
        Ok(m) if !m.is_dir() => bail!(
            "cannot write {}: {} is not a directory",
            output.display(),
            dir.display()
        ),
        Ok(_) => {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                .context("an output path with a NUL byte")?;
            // SAFETY: `c` is a valid NUL-terminated path.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
                bail!(
                    "cannot write {}: no permission to write in {}",
                    output.display(),
                    dir.display()
                );
            }
        }
    }
    catch_signals();
    let mut launched = if command.is_empty() {
        None
    } else {
        Some(Launched::start(&command)?)
    };
    let t = match (&mut launched, pid) {
        (Some(l), _) => l.target(),
        (None, Some(p)) => target::find(p),
        (None, None) => bail!("give a process with -p PID, or a command after --"),
    };
    let t = match t {
        Ok(t) => t,
        Err(e) => {
            if let Some(l) = launched {
                let _ = l.finish();
            }
            return Err(e);
        }
    };
    let tty = std::io::stderr().is_terminal();
    let result = record::record(
        &t,
        &opts,
        &STOP,
        || {
            let names: Vec<&str> = opts.views.iter().map(|v| v.name()).collect();
            eprintln!(
                "pyusdt-prof: recording process {} ({}): {}; Ctrl-C to stop",
                t.pid,
                t.comm,
                names.join(", ")
            );
            if let Some(l) = launched.as_mut() {
                l.go();
            }
        },
        |p, _| {
            if tty {
                eprint!("\r\x1b[K{}", progress_line(p));
            }
        },
    );
    if tty {
        eprint!("\r\x1b[K");
    }
    let code = match launched {
        Some(l) => l.finish()?,
        None => 0,
    };
    let profile = result?;
    profile.write(&output)?;
    let mut summary = format!(
        "pyusdt-prof: wrote {} ({:.1}s of process {}",
        output.display(),
        profile.duration_ns as f64 / 1e9,
        profile.pid
    );
    if profile.processes.len() > 1 {
        summary.push_str(&format!(" and {} more", profile.processes.len() - 1));
    }
    for v in &profile.views {
        summary.push_str(&format!(", {} {}", v.kind.name(), v.events));
    }
    let lost: u64 = profile.views.iter().map(|v| v.lost).sum();
    summary.push_str(&format!(", lost {lost}"));
    let dropped: u64 = [
        record::LOST_STACKS,
        record::LOST_NAMES,
        record::LOST_KERNEL_STACKS,
    ]
    .iter()
    .filter_map(|r| profile.walk_errors.get(*r))
    .sum();
    if dropped > 0 {
        summary.push_str(&format!(
            ", stacks or names dropped {dropped}: see walk_errors"
        ));
    }
    // What recording cost, in this process (the BPF programs' time is the
    // target's, in the kernel).
    // SAFETY: rusage is plain data that getrusage fills.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to fill, for this process only.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        summary.push_str(&format!(
            "; recorder {:.2} s CPU, {:.1} MiB peak",
            secs(ru.ru_utime) + secs(ru.ru_stime),
            ru.ru_maxrss as f64 / 1024.0
        ));
    }
    summary.push(')');
    eprintln!("{summary}");
    Ok(code)
}

/// One event as `trace` prints it: a line, and with stacks the frames
/// leaf first on indented lines; or one JSON object.
fn trace_line(e: &trace::Event, start_ns: u64, stacks: bool, json: bool) -> String {
    let secs = (e.time_ns() as i64 - start_ns as i64) as f64 / 1e9;
    if json {
        let mut v = serde_json::to_value(e).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("time".into(), serde_json::json!(secs));
        }
        return v.to_string();
    }
    let mut line = match e {
        trace::Event::Probe {
            tid,
            thread,
            provider,
            name,
            args,
            ..
        } => {
            let mut l = format!("{secs:.6} {thread} ({tid}) {provider}:{name}");
            for a in args {
                match a {
                    trace::ArgValue::Int(i) => l.push_str(&format!(" {i}")),
                    trace::ArgValue::Str(s) => {
                        l.push(' ');
                        l.push_str(&serde_json::to_string(s).unwrap_or_default());
                    }
                    _ => l.push_str(" ?"),
                }
            }
            l
        }
        trace::Event::Syscall {
            tid,
            thread,
            name,
            duration_ns,
            ret,
            ..
        } => format!(
            "{secs:.6} {thread} ({tid}) syscall:{name} = {ret} <{:.6}>",
            *duration_ns as f64 / 1e9
        ),
        _ => format!("{secs:.6} ?"),
    };
    if stacks {
        for frame in e.stack().iter().rev() {
            line.push_str("\n        ");
            line.push_str(frame);
        }
    }
    line
}

fn trace_cmd(pid: u32, opts: trace::TraceOptions, json: bool) -> Result<u8> {
    errors::check_can_trace()?;
    catch_signals();
    let start_ns = std::cell::Cell::new(0);
    let mut out = std::io::stdout().lock();
    let mut broken = None;
    let stacks = opts.stacks;
    let summary = trace::trace(
        pid,
        &opts,
        &STOP,
        || {
            start_ns.set(trace::monotonic_ns());
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            eprintln!(
                "pyusdt-prof: tracing process {pid} ({}); Ctrl-C to stop",
                comm.trim_end()
            );
        },
        |e| {
            let line = trace_line(&e, start_ns.get(), stacks, json);
            match writeln!(out, "{line}").and_then(|()| out.flush()) {
                Ok(()) => true,
                Err(err) => {
                    broken = Some(err);
                    false
                }
            }
        },
    )?;
    for w in &summary.warnings {
        eprintln!("pyusdt-prof: {w}");
    }
    let mut what = summary.probes.clone();
    if opts.syscalls.is_some() {
        what.push("syscalls".into());
    }
    let mut line = format!(
        "pyusdt-prof: {} events, lost {} ({})",
        summary.events,
        summary.lost,
        what.join(", ")
    );
    if summary.stacks_lost > 0 {
        line.push_str(&format!(", stacks lost {}", summary.stacks_lost));
    }
    eprintln!("{line}");
    match broken {
        // The reader went away (`| head`): that ends the trace, no error.
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Some(e) => Err(e).context("write to stdout"),
        None => Ok(0),
    }
}

/// Reads a profile, with its Python frames named by function if asked.
fn read_profile(path: &Path, functions: bool) -> Result<Profile> {
    let p = Profile::read(path)?;
    Ok(if functions { p.by_function() } else { p })
}

/// The title and unit of a view's flamegraph.
fn flame_options(view: ViewKind) -> FlameOptions {
    let unit = match view.unit() {
        Unit::Samples => flame::Unit::Samples,
        Unit::Nanoseconds => flame::Unit::Nanoseconds,
    };
    let what = match view {
        ViewKind::Cpu => "CPU samples",
        ViewKind::Offcpu => "off-CPU time",
        ViewKind::Syscall => "time in syscalls",
        ViewKind::Gil => "time waiting for the GIL, by holder",
        ViewKind::Calls => "time in every call, exact (self time per call path)",
        _ => "time waited, by waker",
    };
    FlameOptions {
        title: format!("{} view: {what} ({})", view.name(), unit.count_name()),
        subtitle: None,
        unit,
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Record {
            pid,
            output,
            duration,
            freq,
            views,
            subprocesses,
            lines,
            exact,
            span,
            command,
        } => {
            let mut views = views.into_iter().flatten().collect::<BTreeSet<_>>();
            if exact {
                views.insert(ViewKind::Calls);
            }
            let opts = record::Options {
                views,
                freq,
                duration: duration.map(Duration::from_secs_f64),
                subprocesses,
                lines,
                span,
            };
            return record_cmd(pid, output, opts, command);
        }
        Command::Fold {
            input,
            view,
            count,
            merge_threads,
            functions,
        } => {
            let p = read_profile(&input, functions)?;
            let mut out = std::io::stdout().lock();
            for line in p.folded(view, count, merge_threads)? {
                writeln!(out, "{line}")?;
            }
            out.flush().context("write to stdout")?;
        }
        Command::Flame {
            out,
            input,
            view,
            merge_threads,
            functions,
        } => {
            let p = read_profile(&input, functions)?;
            let lines = p.folded(view, false, merge_threads)?;
            let out = out.unwrap_or_else(|| {
                let stem = input
                    .file_stem()
                    .map_or("pyusdt-profile".into(), |s| s.to_string_lossy());
                PathBuf::from(format!("{stem}-{}.svg", view.name()))
            });
            let mut opts = flame_options(view);
            opts.subtitle = Some(format!(
                "{} (pid {}), Python {}",
                p.command.join(" "),
                p.pid,
                p.python
            ));
            write_atomic(&out, |w| flame::write_svg(&lines, &opts, w))?;
            eprintln!("pyusdt-prof: wrote {}", out.display());
        }
        Command::Top {
            pid,
            freq,
            interval,
        } => {
            errors::check_can_trace()?;
            let t = target::find(pid)?;
            let screen = top::Screen::open()?;
            let opts = record::Options {
                views: [ViewKind::Cpu, ViewKind::Offcpu, ViewKind::Syscall]
                    .into_iter()
                    .collect(),
                freq,
                duration: None,
                subprocesses: false,
                lines: false,
                span: None,
            };
            catch_signals();
            let title = format!(
                "pyusdt-prof top: process {} ({})",
                t.pid,
                pyusdt_prof::profile::short_command(
                    &target::command_line(t.pid).unwrap_or_else(|| vec![t.comm.clone()])
                )
            );
            let mut driver = top::Driver::new(
                top::Top::new(title, freq),
                screen,
                Duration::from_secs_f64(interval),
            );
            let mut failed = None;
            let result = record::record(
                &t,
                &opts,
                &STOP,
                || {},
                |_, snapshot| match driver.tick(snapshot) {
                    Ok(true) => {}
                    Ok(false) => STOP.store(true, Ordering::Relaxed),
                    Err(e) => {
                        failed = Some(e);
                        STOP.store(true, Ordering::Relaxed);
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
        }
        Command::Report {
            input,
            view,
            thread,
            per_thread,
            limit,
            format,
            functions,
        } => {
            let p = read_profile(&input, functions)?;
            let opts = report::ReportOptions {
                views: view,
                thread,
                per_thread,
                limit: limit as usize,
            };
            let r = report::report(&p, &opts)?;
            let mut out = std::io::stdout().lock();
            if format == "json" {
                serde_json::to_writer_pretty(&mut out, &r).context("write to stdout")?;
                writeln!(out)?;
            } else {
                out.write_all(report::text(&r).as_bytes())?;
            }
            out.flush().context("write to stdout")?;
        }
        Command::Export {
            input,
            format,
            output,
            view,
            functions,
        } => {
            let p = read_profile(&input, functions)?;
            let view = if view.is_empty() && format == export::Format::Folded {
                vec![ViewKind::Cpu]
            } else {
                view
            };
            let out = output.unwrap_or_else(|| {
                let stem = input
                    .file_stem()
                    .map_or("pyusdt-profile".into(), |s| s.to_string_lossy());
                PathBuf::from(format!("{stem}.{}", format.extension()))
            });
            // Refuse what cannot be exported before creating any file.
            export::check(&p, format, &view)?;
            write_atomic(&out, |w| export::export(&p, format, &view, w))?;
            eprintln!("pyusdt-prof: wrote {}", out.display());
        }
        Command::Diff {
            before,
            after,
            output,
            view,
            normalize,
            functions,
        } => {
            let (b, a) = (
                read_profile(&before, functions)?,
                read_profile(&after, functions)?,
            );
            let lines = |p: &Profile, which: &PathBuf| {
                p.folded(view, false, true)
                    .with_context(|| format!("{}", which.display()))
            };
            let (lb, la) = (lines(&b, &before)?, lines(&a, &after)?);
            let mut opts = flame_options(view);
            opts.title = format!("Differential {}", opts.title);
            opts.subtitle = Some(format!(
                "{} -> {}: red grew, blue shrank{}",
                before.display(),
                after.display(),
                if normalize { " (normalized)" } else { "" }
            ));
            write_atomic(&output, |w| {
                flame::write_diff_svg(&lb, &la, normalize, &opts, w)
            })?;
            eprintln!("pyusdt-prof: wrote {}", output.display());
        }
        Command::List { pid } => {
            let probes = usdt::list(pid)?;
            let mut out = std::io::stdout().lock();
            if probes.is_empty() {
                writeln!(out, "process {pid} carries no USDT probes")?;
            }
            for p in &probes {
                let name = format!("{}:{}", p.provider, p.name);
                writeln!(
                    out,
                    "{name:<28} {:<9} {}  {}",
                    if p.semaphore { "semaphore" } else { "" },
                    p.file,
                    p.args
                )?;
            }
            out.flush().context("write to stdout")?;
        }
        Command::Trace {
            pid,
            probes,
            syscalls,
            stacks,
            duration,
            json,
        } => {
            let opts = trace::TraceOptions {
                probes,
                syscalls,
                stacks,
                duration: duration.map(Duration::from_secs_f64),
            };
            return trace_cmd(pid, opts, json);
        }
        Command::Layout { pid, json, timeout } => {
            errors::check_can_trace()?;
            let t = target::find(pid)?;
            let l = layout::receive(&t, Duration::from_secs_f64(timeout))?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", layout::to_json(&l))?;
            } else {
                writeln!(
                    out,
                    "process {pid} ({}): Python {}, pyusdt layout v{}",
                    t.comm,
                    layout::python_version(&l),
                    l.version
                )?;
                for (name, value) in layout::describe(&l) {
                    writeln!(out, "  {name:<26} {value}")?;
                }
            }
            out.flush().context("write to stdout")?;
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        // A probe or syscall the process does not have: a bad argument,
        // which exits as clap's do.
        Err(e) if e.downcast_ref::<trace::TraceError>().is_some() => {
            eprintln!("pyusdt-prof: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("pyusdt-prof: {e:#}");
            if let Some(h) = errors::hint(&e) {
                eprintln!("hint: {h}");
            }
            ExitCode::FAILURE
        }
    }
}
