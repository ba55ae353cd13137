//! The CPU sampler end to end: a Python workload of known shape under
//! `python -m pyusdt`, sampled through BPF with the announced layout, on
//! each interpreter the Makefile built the extension for.
//!
//! Needs root and BPF: without them these tests pass with a note, unless
//! PYUSDT_REQUIRE_BPF=1 (CI), which makes them fail.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pyusdt_prof::pyname::Namer;
use pyusdt_prof::{layout, sampler, target};

/// Kills the child when the test ends, pass or fail.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreters to test: PYUSDT_TEST_PYTHONS, else every .venv/X.Y.
fn pythons() -> Vec<PathBuf> {
    if let Ok(list) = std::env::var("PYUSDT_TEST_PYTHONS") {
        return list.split_whitespace().map(PathBuf::from).collect();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(root().join(".venv"))
        .map(|d| d.flatten().map(|e| e.path().join("bin/python")).collect())
        .unwrap_or_default();
    found.retain(|p| p.exists());
    found.sort();
    found
}

/// Whether BPF tests can run; panics if they must and cannot.
fn bpf_ok(what: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let have_pythons = !pythons().is_empty();
    if root && have_pythons {
        return true;
    }
    let why = if root {
        "no Python with pyusdt (run make build)"
    } else {
        "needs root for BPF"
    };
    if std::env::var("PYUSDT_REQUIRE_BPF").as_deref() == Ok("1") {
        panic!("PYUSDT_REQUIRE_BPF=1 but {what} {why}");
    }
    eprintln!("skipping {what}: {why}");
    false
}

fn start(python: &Path, script: &str) -> Guard {
    let mut child = Command::new(python)
        .args(["-m", "pyusdt"])
        .arg(root().join("tests/scripts").join(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read the workload's ready line");
    assert_eq!(line, "ready\n", "{} did not start", python.display());
    Guard(child)
}

#[test]
fn cpu_shares_follow_the_work_and_sleep_is_not_cpu() {
    if !bpf_ok("cpu_shares_follow_the_work_and_sleep_is_not_cpu") {
        return;
    }
    for python in pythons() {
        let child = start(&python, "cpu_ratio.py");
        let pid = child.0.id();
        let t = target::find(pid).expect("find the workload");
        let l = layout::receive(&t, Duration::from_secs(10)).expect("receive its layout");
        let until = Instant::now() + Duration::from_millis(3000);
        let profile = sampler::sample_cpu(&t, &l, 999, || Instant::now() < until).expect("sample");
        let mut namer = Namer::new(pid, l);

        let (mut heavy, mut light, mut nap, mut total) = (0u64, 0u64, 0u64, 0u64);
        for s in &profile.stacks {
            total += s.count;
            let names: Vec<String> = s
                .python
                .iter()
                .map(|&c| namer.name(c).to_string())
                .collect();
            let has = |f: &str| names.iter().any(|n| n.starts_with(&format!("{f} (")));
            if has("heavy") {
                heavy += s.count;
            } else if has("light") {
                light += s.count;
            }
            if has("nap") {
                nap += s.count;
            }
            if has("heavy") || has("light") {
                // Below the launcher's frames (runpy, pyusdt.__main__):
                // the script's module, heavy or light, and spin unless the
                // sample caught heavy or light before or after the call.
                let script = names
                    .iter()
                    .position(|n| n.starts_with("<module> (") && n.ends_with("cpu_ratio.py:1)"))
                    .unwrap_or_else(|| panic!("no module frame in {names:?}"));
                let tail: Vec<&str> = names[script + 1..]
                    .iter()
                    .map(|n| n.split(" (").next().unwrap_or(""))
                    .collect();
                let ok = matches!(
                    tail.as_slice(),
                    ["heavy" | "light"] | ["heavy" | "light", "spin"]
                );
                assert!(ok, "{names:?}");
            }
        }
        drop(child);
        let share = heavy as f64 / (heavy + light) as f64;
        eprintln!(
            "{}: {total} samples, heavy {heavy}, light {light}, nap {nap}, walk errors {:?}",
            python.display(),
            profile.walk_errors
        );
        assert_eq!(profile.lost, 0);
        assert!(heavy + light > 500, "too few samples: {heavy} + {light}");
        assert!(
            (share - 0.75).abs() <= 0.05,
            "heavy's share {share:.3}, expected 0.75 ± 0.05"
        );
        // nap() is most of the wall time; only its few microseconds of
        // getting into and out of the sleep are CPU.
        assert!(
            (nap as f64) < 0.05 * total as f64,
            "sleeping shows as CPU: {nap} of {total}"
        );
    }
}
