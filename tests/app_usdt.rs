//! App-defined probes (`pyusdt.Probe`) under libbpf, the way the profiler
//! attaches: `attach_usdt(pid, path, provider, name)` on the generated
//! object, semaphore included.
//!
//! The child declares `apptest:announce(int, int)` and, once the probe is
//! enabled (its semaphore raised by the kernel through libbpf's uprobe
//! reference counter), fires it with its layout's address and size. The
//! profiler's own layout program, attached to that app probe, copies the
//! layout out of the child; it must be the layout pyusdt reports.
//!
//! Runs for each interpreter in `PYUSDT_TEST_PYTHONS` (the Makefile sets
//! it); needs root. Without either it says so and passes, unless
//! `PYUSDT_REQUIRE_BPF=1`.

use std::io::{BufRead, BufReader, Write};
use std::mem::MaybeUninit;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use libbpf_rs::RingBufferBuilder;
use pyusdt_prof::target::{layout, usdt};

const CHILD: &str = r#"
import sys, time
import pyusdt, pyusdt._native as native
probe = pyusdt.Probe("apptest", "announce", int, int)
size = native._layout_offsets()["__size__"][1]
lay = pyusdt.layout()
print(probe.load(), lay["address"], lay["runtime_addr"], lay["py_version_hex"], flush=True)
for line in sys.stdin:
    want = line.strip() == "on"
    while probe.enabled != want:
        time.sleep(0.001)
    probe.fire(lay["address"], size)
    print("fired", int(probe.enabled), flush=True)
"#;

/// The child, killed when the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn line(out: &mut BufReader<ChildStdout>) -> String {
    let mut s = String::new();
    out.read_line(&mut s).expect("read the child's stdout");
    assert!(!s.is_empty(), "the child closed its stdout");
    s.trim_end().to_string()
}

fn ask(stdin: &mut ChildStdin, out: &mut BufReader<ChildStdout>, what: &str) -> String {
    writeln!(stdin, "{what}").expect("write to the child");
    stdin.flush().expect("flush the child's stdin");
    line(out)
}

fn skip(why: &str) {
    if std::env::var("PYUSDT_REQUIRE_BPF").as_deref() == Ok("1") {
        panic!("PYUSDT_REQUIRE_BPF=1 but {why}");
    }
    eprintln!("skipped: {why}");
}

fn check(python: &str) {
    let dir = std::env::temp_dir().join(format!("pyusdt-app-usdt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("make the probe directory");
    let mut child = Guard(
        Command::new(python)
            .args(["-c", CHILD])
            .env("PYUSDT_PROBE_DIR", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the child"),
    );
    let pid = child.0.id();
    let mut stdin = child.0.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.0.stdout.take().expect("stdout"));
    let first = line(&mut out);
    let fields: Vec<&str> = first.split(' ').collect();
    let [path, address, runtime, version] = fields[..] else {
        panic!("unexpected first line {first:?}");
    };
    let runtime: u64 = runtime.parse().expect("runtime_addr");
    let version: u32 = version.parse().expect("py_version_hex");
    assert!(address.parse::<u64>().is_ok());

    // The profiler's note reader sees the probe and its semaphore.
    let image = std::fs::read(path).expect("read the probe object");
    let notes = usdt::notes(&image, path);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(
        (notes[0].provider.as_str(), notes[0].name.as_str()),
        ("apptest", "announce")
    );
    assert_eq!(notes[0].args, "-8@%rdi -8@%rsi");
    assert!(notes[0].semaphore);

    let mut storage = MaybeUninit::uninit();
    let skel = layout::open(&mut storage).expect("open the layout program");
    let link = skel
        .progs
        .on_layout
        .attach_usdt(pid as i32, path, "apptest", "announce")
        .expect("attach_usdt to apptest:announce");
    let inbox = layout::Inbox::default();
    let mut builder = RingBufferBuilder::new();
    layout::watch(&mut builder, &skel, &inbox).expect("watch");
    let ring = builder.build().expect("build the ring buffer");

    // "on" waits until the semaphore is raised, then fires once.
    assert_eq!(ask(&mut stdin, &mut out, "on"), "fired 1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        ring.poll(Duration::from_millis(50)).expect("poll");
        if let Some(e) = inbox.borrow_mut().pop() {
            break e;
        }
        assert!(Instant::now() < deadline, "no hit of apptest:announce");
    };
    assert_eq!(event.pid, pid);
    let l = layout::accept(&event).expect("a layout the profiler accepts");
    assert_eq!((l.runtime_addr, l.py_version_hex), (runtime, version));

    // Detached: the semaphore drops back and enabled follows.
    drop(ring);
    drop(link);
    assert_eq!(ask(&mut stdin, &mut out, "off"), "fired 0");
    drop(stdin);
    let status = child.0.wait().expect("wait for the child");
    assert!(status.success());
    // The child removed its file at exit.
    assert!(!std::path::Path::new(path).exists());
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn libbpf_attaches_to_an_app_probe_and_raises_its_semaphore() {
    let pythons = std::env::var("PYUSDT_TEST_PYTHONS").unwrap_or_default();
    if pythons.trim().is_empty() {
        return skip("PYUSDT_TEST_PYTHONS names no interpreter");
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip("BPF needs root");
    }
    for python in pythons.split_whitespace() {
        check(python);
    }
}
