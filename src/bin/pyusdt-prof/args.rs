//! The command line: every command and option, with its help.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use pyusdt_prof::profile::{ViewKind, DEFAULT_FILE as DEFAULT_PROFILE};
use pyusdt_prof::readers::export;
use pyusdt_prof::record::StacksAt;
use pyusdt_prof::{record, trace};

/// A profiler for Python on Linux: Python frames with CPU, off-CPU,
/// syscall, wake-up and GIL time, per thread.
///
/// Any CPython process, as it runs: no restart. With the pyusdt extension
/// loaded in it (`python -m pyusdt app.py`, or `-m module`, or `import
/// pyusdt; pyusdt.enable()` inside it) there is more: --exact call counts,
/// spans and app probes need it, and it names threads by their Python
/// names. pyusdt-prof needs root (or CAP_BPF, CAP_PERFMON and
/// CAP_SYS_PTRACE).
///
/// Python versions (CPython, with the GIL; a free-threaded build is
/// refused in one line):
///
///   3.11        every view; no --exact nor per-call probes (no sys.monitoring)
///
///   3.12, 3.13  every view, --exact, --lines, spans, trace
///
///   3.14, 3.15  the same; on a stripped build (Debian's) --gil-probes
///               falls back to the futex syscalls (`report` says so)
///
/// Threads are named by their Python name (`threading`; without pyusdt,
/// only where Python 3.14+ gives it to the kernel), with the kernel's name
/// beside the id where it differs: `thread worker (4243, python)`.
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
///
///   sudo pyusdt-prof dump -p 4242            # every thread's stack now
#[derive(Debug, Parser)]
#[command(version, propagate_version = true, verbatim_doc_comment)]
pub struct Cli {
    /// Print libbpf's messages as they come, the verifier's whole log
    /// among them when the kernel rejects a program (also
    /// PYUSDT_PROF_BPF_LOG=1)
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record a Python process: CPU samples, off-CPU time, syscalls and
    /// wake-ups, each under the Python frames of each thread.
    ///
    /// Attach to a running process with -p, or launch one after `--`
    /// (`python app.py`, or `python -m pyusdt app.py`): a launched program
    /// starts only once everything is attached, so nothing it does is
    /// missed (without pyusdt it is held from when its interpreter has
    /// started), and its exit code is passed on. Recording ends after -d,
    /// at Ctrl-C, or when the process exits. Nothing runs per Python
    /// call: frames are read only when an event happens.
    ///
    /// Views, what they weigh, and what they cost the program (measured
    /// with `make bench`, bench/RESULTS.md; each walks the thread's Python
    /// frames per event, about a microsecond):
    ///
    ///   cpu      samples at -F Hz; ~2-11 us per sample: unmeasurable on
    ///            pyperformance and http.server. The default.
    ///   offcpu   time blocked or waiting for a CPU, with the kernel stack;
    ///            waits under 1 ms sampled (--sample-waits-below); ~1.3 us
    ///            per context switch: http.server 1.09x slower (every
    ///            wait, 2.8 us per switch: 1.15x). Measured on a kernel
    ///            without kprobes; with them (`check` says) the stacks
    ///            are read only for the waits kept, as the thread comes
    ///            back.
    ///   wakeup   time waited, under the thread and frames that woke it;
    ///            sampled alike; ~0.4 us per wake-up: http.server 1.05x.
    ///   syscall  time inside each syscall, and calls; ~0.2-0.9 us per
    ///            syscall: 1-byte writes 3.8x, http.server 1.19x.
    ///   gil      time waiting for the GIL, under the thread that held it;
    ///            seen where a wait blocks, as the thread leaves the CPU in
    ///            a futex wait on the GIL (Linux 5.15+; ~1.4 us per
    ///            context switch): 1-byte writes 1.14x, http.server 1.05x
    ///            (older kernels: at the futex syscalls, whose handlers
    ///            alone slow 1-byte writes 1.6x). With --gil-probes,
    ///            uprobes on every take and drop of the GIL: 1-byte writes
    ///            13.7x, http.server 1.23x; and cpu samples of threads
    ///            waiting for it end in `[waiting for the GIL]`.
    ///   all      every view above: http.server 1.37x.
    ///   calls    every Python call and return (with --exact, Python
    ///            3.12+): exact call counts, inclusive and self time per
    ///            call path. ~110 ns per call (two sys.monitoring
    ///            callbacks, stamped from the CPU's time stamp counter,
    ///            batched into the kernel): fib 4.6x slower, 2.8x of it
    ///            sys.monitoring's own with a counter read per event
    ///            (cProfile 6.5x, bpftrace on PY_START/PY_RETURN 30x).
    ///
    /// Only cpu is on by default: the others cost the realistic workloads
    /// more than the 3% a profiler attached to a live service may take;
    /// ask for them where that price is worth paying.
    ///
    /// Examples:
    ///
    ///   sudo pyusdt-prof record -p 4242 -d 30     # any running CPython
    ///
    ///   sudo pyusdt-prof record --views all -- python app.py
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
    Record(RecordArgs),
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
        /// The process id of a Python program.
        #[arg(short, long)]
        pid: u32,
        /// CPU samples per second, per CPU.
        #[arg(short = 'F', long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(*record::FREQ.start()..=*record::FREQ.end()))]
        freq: u64,
        /// Seconds between refreshes.
        #[arg(short, long, default_value_t = 1.0, value_parser = parse_seconds)]
        interval: f64,
        /// Off-CPU waits shorter than this are sampled, as `record` samples
        /// them (each kept one counts for the ones like it, so every
        /// function's expected time is the true one); 0 keeps every wait,
        /// at the full price. A number with a unit: 1ms, 250us, 0.
        #[arg(long, value_name = "TIME", default_value = "1ms", value_parser = parse_wait)]
        sample_waits_below: u64,
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
        /// Rows per table (the text draws at most 5 histograms).
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
        /// Print each event's Python stack (any CPython 3.11-3.15, with or
        /// without pyusdt).
        #[arg(long)]
        stacks: bool,
        /// Stop after this many seconds.
        #[arg(short, long, value_parser = parse_seconds)]
        duration: Option<f64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Say whether pyusdt-prof can record on this machine, and how: the
    /// kernel's BTF, the BPF features it offers and the variant of the
    /// programs that fits it, lockdown, and privileges.
    ///
    /// Exits 0 if a recording can start here, 1 if not (it says why).
    ///
    /// Examples:
    ///
    ///   sudo pyusdt-prof check
    ///
    ///   sudo pyusdt-prof check --json | jq .bpf_loop
    #[command(verbatim_doc_comment)]
    Check {
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the interpreter layout of a Python process.
    ///
    /// Prints the interpreter version, where its thread list and GIL are,
    /// and the offsets a BPF program uses to walk its frames: a quick
    /// check that a process can be profiled. Of a process that runs
    /// pyusdt, what its `pyusdt:layout` probe announces; of any other
    /// CPython 3.11-3.15, what pyusdt-prof finds itself, from the
    /// interpreter's symbols, its `_Py_DebugOffsets` (3.13+) and the
    /// tables built into pyusdt-prof.
    ///
    /// Examples:
    ///
    ///   pyusdt-prof layout -p 4242
    ///
    ///   pyusdt-prof layout -p "$(pgrep -f 'pyusdt app.py')" --json
    ///
    ///   pyusdt-prof layout -p 4242 --derive   # even where pyusdt runs
    #[command(verbatim_doc_comment)]
    Layout {
        /// The process id of a Python program.
        #[arg(short, long)]
        pid: u32,
        /// Print every field as JSON.
        #[arg(long)]
        json: bool,
        /// Find the layout without asking pyusdt, even where it runs.
        #[arg(long)]
        derive: bool,
        /// How long to wait for the announcement, in seconds.
        #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
        timeout: f64,
    },
    /// Print every thread's stack now: its Python frames (innermost
    /// first, at the line each is at), its name, whether it runs or
    /// sleeps and in which syscall, whether it holds or waits for the
    /// GIL, and the kernel functions it is blocked in. For a process that
    /// hangs. The process runs on; with or without pyusdt in it.
    ///
    /// Examples:
    ///
    ///   sudo pyusdt-prof dump -p 4242
    ///
    ///   sudo pyusdt-prof dump -p 4242 --subprocesses --json | jq '.[].threads[].python[0]'
    #[command(verbatim_doc_comment)]
    Dump {
        /// The process id.
        #[arg(short, long)]
        pid: u32,
        /// Every process it started too, recursively.
        #[arg(long)]
        subprocesses: bool,
        /// Print it as JSON: a list of processes, each with its threads.
        #[arg(long)]
        json: bool,
        /// How long to wait for a process's layout, in seconds.
        #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
        timeout: f64,
    },
    /// Print the completions of every command and option for a shell.
    ///
    /// Examples:
    ///
    ///   pyusdt-prof completions bash > /etc/bash_completion.d/pyusdt-prof
    ///
    ///   pyusdt-prof completions zsh > "${fpath[1]}/_pyusdt-prof"
    ///
    ///   pyusdt-prof completions fish > ~/.config/fish/completions/pyusdt-prof.fish
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    let t = s
        .parse::<f64>()
        .map_err(|_| format!("`{s}` is not a number of seconds from 0 to 86400"))?;
    record::seconds(t).map(|_| t)
}

/// A time with a unit (`ns`, `us`, `ms`, `s`; 0 needs none), in ns, at
/// most a second.
fn parse_wait(s: &str) -> std::result::Result<u64, String> {
    let bad = || format!("`{s}` is not a time such as 1ms, 250us or 0 (at most 1s)");
    let t = s.trim();
    let (num, scale) = [("ns", 1.0), ("us", 1e3), ("ms", 1e6), ("s", 1e9)]
        .iter()
        .find_map(|&(unit, scale)| t.strip_suffix(unit).map(|n| (n, scale)))
        .unwrap_or((t, 0.0));
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 || (scale == 0.0 && v != 0.0) || v * scale > 1e9 {
        return Err(bad());
    }
    Ok((v * scale).round() as u64)
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
    ViewKind::named_or_all(s)
}

fn parse_view(s: &str) -> std::result::Result<ViewKind, String> {
    ViewKind::named(s)
}

/// The options of `record`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The process id of a Python program (with --subprocesses, of any
    /// program: a shell).
    #[arg(
        short,
        long,
        required_unless_present = "command",
        conflicts_with = "command"
    )]
    pub pid: Option<u32>,
    /// Where to write the profile.
    #[arg(short, long, default_value = DEFAULT_PROFILE)]
    pub output: PathBuf,
    /// Stop after this many seconds and write the profile. A program
    /// launched after -- that still runs then goes on, unrecorded (its
    /// exit code is not waited for: record exits 0).
    #[arg(short, long, value_parser = parse_seconds)]
    pub duration: Option<f64>,
    /// CPU samples per second, per CPU.
    #[arg(short = 'F', long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(*record::FREQ.start()..=*record::FREQ.end()))]
    pub freq: u64,
    /// The views to record, comma-separated, or all.
    #[arg(long, value_delimiter = ',', default_value = "cpu", value_parser = parse_view_or_all)]
    pub views: Vec<Vec<ViewKind>>,
    /// Record the processes the target starts too (fork, and exec of
    /// a new program), each under its own `process CMD (PID)` root.
    /// Forked children are recorded from their first instruction; a
    /// Python they exec, from when its interpreter has started (with
    /// `python -m pyusdt`, it waits for the recorder there).
    /// Those it already runs (with -p) are followed too. The target may
    /// be a shell: `record --subprocesses -- bash run.sh` records the
    /// Python programs it starts. Recording then ends when every
    /// recorded process has exited.
    #[arg(long)]
    pub subprocesses: bool,
    /// Name each Python frame by the line it is at, `qualname
    /// (file:line)`, not by its function (`qualname (file:firstline)`);
    /// the readers' --functions folds lines back into functions.
    #[arg(long)]
    pub lines: bool,
    /// Record only what threads do inside span NAME: the blocks and
    /// functions of `with pyusdt.span(NAME):` / `@pyusdt.span(NAME)`
    /// (while a thread is in one); the profile and `report` add the
    /// spans' count and a histogram of how long they lasted. Needs
    /// pyusdt in the process.
    #[arg(long, value_name = "NAME")]
    pub span: Option<String>,
    /// Also record every Python call and return (the calls view;
    /// Python 3.12+): exact call counts and exact inclusive and self
    /// time per function and call path, kept in the kernel. Slows
    /// call-heavy code many times over; the other views cost nothing
    /// per call. Needs pyusdt in the process.
    #[arg(long)]
    pub exact: bool,
    /// The gil view by uprobes on the interpreter's take_gil and drop_gil
    /// (not stripped): every take of the GIL, also those that did not
    /// block, counted exactly, at a uprobe's price per take (1-byte writes
    /// about 25x slower); without it, a wait is seen where it blocks, at
    /// the futex syscalls.
    #[arg(long)]
    pub gil_probes: bool,
    /// The offcpu and wakeup views, and the gil view's blocks at the futex
    /// syscalls, sample the waits shorter than this: a wait of L is kept
    /// with probability 1/k, k = floor(T/L), and counts as k such waits
    /// (time, count and histogram), so every stack's expected totals are
    /// the true ones; waits of T/2 and longer are all kept, whole. Most
    /// context switches last microseconds, and their stacks are most of
    /// what these views cost. The profile, `report` and the summary line
    /// say so. 0 keeps every wait, at the full price. A number with a
    /// unit: 1ms, 250us, 0.
    #[arg(long, value_name = "TIME", default_value = "1ms", value_parser = parse_wait)]
    pub sample_waits_below: u64,
    /// Where the offcpu and wakeup views read the Python stack of a wait
    /// they keep. A thread's memory can be read only while it runs, and
    /// sched_switch runs as it leaves, before the wait's length is known:
    /// at departure, every wait's stack is read, most of them for waits
    /// then sampled out. At the syscall's exit, as the thread comes back
    /// from the syscall it left in (a wait begun outside one, a
    /// preemption, is read as it leaves), only the kept waits' stacks are
    /// read, but every syscall of the machine pays a tracepoint. That pays
    /// where threads switch often and make few syscalls between (two
    /// threads handing a lock to each other: the handlers' time fell from
    /// 24 to 14 ms over 20,000 switches); on http.server (5 syscalls a
    /// switch) from 88 to 67 ms, the requests a second within the noise;
    /// 1-byte writes ran 1.6x slower than plain, against 1.1x. The views'
    /// notes say which way a recording took.
    #[arg(long, value_name = "WAY", value_enum, default_value_t = StacksAt::Auto)]
    pub offcpu_stacks_at: StacksAt,
    /// The command to launch and record (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::parse_wait;

    #[test]
    fn waits_read_with_their_unit() {
        assert_eq!(parse_wait("1ms"), Ok(1_000_000));
        assert_eq!(parse_wait("250us"), Ok(250_000));
        assert_eq!(parse_wait("0.5 ms"), Ok(500_000));
        assert_eq!(parse_wait("800ns"), Ok(800));
        assert_eq!(parse_wait("1s"), Ok(1_000_000_000));
        assert_eq!(parse_wait("0"), Ok(0));
        for bad in ["1", "2s", "-1ms", "ms", "1 hour", "nanms"] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }
}
