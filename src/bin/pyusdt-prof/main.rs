//! The `pyusdt-prof` command line: each command one call into the
//! library; the commands and their options are in [`args`].

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use pyusdt_prof::bpf::kernel;
use pyusdt_prof::profile::{Profile, ViewKind};
use pyusdt_prof::readers::{draw, export, report, top};
use pyusdt_prof::record::run::Run;
use pyusdt_prof::record::{self, Options};
use pyusdt_prof::target::{self, dump, layout, usdt};
use pyusdt_prof::{errors, trace, Result};

mod args;

use args::{Cli, Command, RecordArgs};

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

/// Writes `text` to stdout, all of it.
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush().context("write to stdout")
}

/// `record`: what to record from the command's options.
fn record_command(a: RecordArgs, verbose: bool) -> Result<u8> {
    let RecordArgs {
        pid,
        output,
        duration,
        freq,
        views,
        subprocesses,
        lines,
        exact,
        span,
        gil_probes,
        sample_waits_below,
        offcpu_stacks_at,
        command,
    } = a;
    let mut views = views.into_iter().flatten().collect::<BTreeSet<_>>();
    if exact {
        views.insert(ViewKind::Calls);
    }
    let opts = Options {
        views,
        freq,
        duration: duration.map(Duration::from_secs_f64),
        subprocesses,
        lines,
        span,
        attached: command.is_empty(),
        gil_probes,
        sample_waits_below_ns: sample_waits_below,
        stacks_at: offcpu_stacks_at,
    };
    catch_signals();
    let r = Run {
        pid,
        command,
        output,
        opts,
        verbose,
    };
    record::run::run(&r, &STOP)
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Record(a) => return record_command(a, cli.verbose),
        Command::Fold {
            input,
            view,
            count,
            merge_threads,
            functions,
        } => {
            let p = Profile::read_as(&input, functions)?;
            let mut text = String::new();
            for line in p.folded(view, count, merge_threads)? {
                text.push_str(&line);
                text.push('\n');
            }
            print(&text)?;
        }
        Command::Flame {
            out,
            input,
            view,
            merge_threads,
            functions,
        } => {
            let out = draw::flamegraph(&input, out, view, merge_threads, functions)?;
            eprintln!("pyusdt-prof: wrote {}", out.display());
        }
        Command::Top {
            pid,
            freq,
            interval,
            sample_waits_below,
        } => {
            catch_signals();
            let interval = Duration::from_secs_f64(interval);
            top::run(pid, freq, interval, sample_waits_below, &STOP)?;
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
            let p = Profile::read_as(&input, functions)?;
            let opts = report::ReportOptions {
                views: view,
                thread,
                per_thread,
                limit: limit as usize,
            };
            let r = report::report(&p, &opts)?;
            if format == "json" {
                let json = serde_json::to_string_pretty(&r).context("write the report")?;
                print(&format!("{json}\n"))?;
            } else {
                print(&report::text(&r))?;
            }
        }
        Command::Export {
            input,
            format,
            output,
            view,
            functions,
        } => {
            let out = export::export_file(&input, format, output, view, functions)?;
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
            draw::diff(&before, &after, &output, view, normalize, functions)?;
            eprintln!("pyusdt-prof: wrote {}", output.display());
        }
        Command::List { pid } => print(&usdt::listing(pid)?)?,
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
            catch_signals();
            return trace::run(pid, &opts, json, &STOP);
        }
        Command::Dump {
            pid,
            subprocesses,
            json,
            timeout,
        } => {
            errors::check_can_trace()?;
            let dumps = dump::dump(pid, subprocesses, Duration::from_secs_f64(timeout))?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&dumps)?))?;
            } else {
                print(&dump::text(&dumps))?;
            }
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "pyusdt-prof", &mut out);
            let mut text = String::from_utf8_lossy(&out).into_owned();
            if shell == clap_complete::Shell::Bash {
                // clap_complete 4.6 names the subcommands' cases of a
                // hyphenated program `pyusdt__subcmd__prof__...` but
                // matches `pyusdt__prof__...`: no option would complete.
                text = text.replace("pyusdt__subcmd__prof", "pyusdt__prof");
            }
            print(&text)?;
        }
        Command::Check { json } => {
            let c = kernel::Check::now();
            if json {
                print(&format!("{}\n", serde_json::to_string(&c)?))?;
            } else {
                print(&format!("{c}\n"))?;
            }
            return Ok(if c.ok { 0 } else { 1 });
        }
        Command::Layout {
            pid,
            json,
            derive,
            timeout,
        } => {
            errors::check_can_trace()?;
            let t = target::find(pid)?;
            let derive = derive || !t.has_pyusdt();
            let l = if derive {
                target::derive::derive_now(pid)?
            } else {
                layout::receive(&t, Duration::from_secs_f64(timeout))?
            };
            print(&layout::printout(&t, &l, derive, json))?;
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    errors::capture_libbpf_log(cli.verbose);
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
