//! Receiving a process's layout announcement.
//!
//! The BPF program in `bpf/layout.bpf.c` is attached to `pyusdt:layout` in
//! the target. Attaching raises the probe's semaphore; the extension's poll
//! thread sees it within `PYUSDT_CHECK_MSEC` and fires the probe with the
//! address and size of its layout struct, which the BPF program copies out
//! of the target into a ring buffer.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject, RingBufferBuilder};
use pyusdt_contract::for_each_layout_field;
use pyusdt_contract::layout as contract;

use crate::bpf::layout::{types, LayoutSkel, LayoutSkelBuilder};
use crate::target::Target;
use crate::Result;

/// The layout struct as the BPF side sees it (the skeleton's type, built
/// from `bpf/pyusdt_layout.h`).
pub type Layout = types::pyusdt_layout;

/// Checks that an announcement is one this profiler can read.
pub fn check(pid: u32, l: &Layout, announced_size: u64) -> Result<()> {
    if l.magic != contract::MAGIC {
        bail!("process {pid} announced something that is not a pyusdt layout");
    }
    let size = std::mem::size_of::<Layout>() as u64;
    if l.version != contract::VERSION || announced_size != size || u64::from(l.size) != size {
        bail!(
            "process {pid} runs a pyusdt with layout version {} ({} bytes); this pyusdt-prof \
             reads version {} ({size} bytes): use the pyusdt and pyusdt-prof of one release",
            l.version,
            announced_size,
            contract::VERSION
        );
    }
    if l.flags & contract::F_FREE_THREADED != 0 {
        bail!(
            "process {pid} runs a free-threaded CPython {}: free-threaded CPython is not \
             supported yet",
            python_version(l)
        );
    }
    // bpf/pyframe.bpf.h reads the fields of a frame it needs in one read
    // of FRAME_CHUNK (128) bytes.
    let far = [l.frame_code, l.frame_previous, l.frame_owner, l.frame_instr];
    if far.iter().any(|&off| off > 120) {
        bail!(
            "process {pid}'s interpreter lays its frames out beyond what this pyusdt-prof \
             reads (offsets {far:?}); this Python version is not supported"
        );
    }
    Ok(())
}

/// An announcement as the ring buffer carries it.
pub type Event = types::layout_event;

/// Where announcements arrive, for [`watch`].
pub type Inbox = Rc<RefCell<Vec<Event>>>;

/// Opens and loads the layout program; [`attach`] it to each process
/// whose layout is wanted.
pub fn open(storage: &mut MaybeUninit<OpenObject>) -> Result<LayoutSkel<'_>> {
    let open = LayoutSkelBuilder::default()
        .open(storage)
        .context("open the layout BPF object")?;
    crate::errors::loaded("load the layout BPF program", || open.load())
}

/// Attaches the layout program to `pyusdt:layout` in `target`: its poll
/// thread announces the layout within a tick, and again each tick while
/// the link lives.
pub fn attach(skel: &LayoutSkel<'_>, target: &Target) -> Result<Link> {
    attach_pyusdt(&skel.progs.on_layout, target, "layout")
}

/// Attaches `prog` to probe `pyusdt:name` in `target`'s extension.
fn attach_pyusdt(prog: &libbpf_rs::ProgramMut<'_>, target: &Target, name: &str) -> Result<Link> {
    let path = target.extension_path(&format!("the probe pyusdt:{name}"))?;
    prog.attach_usdt(target.pid as i32, &path, "pyusdt", name)
        .with_context(|| format!("attach to pyusdt:{name} in {}", path.display()))
}

/// Attaches the layout object's thread-name program to `pyusdt:thread` in
/// `target`: while the link lives, its poll thread tells the Python name
/// of each of its threads (those it has not told yet, each tick; all of
/// them each second). An extension older than the probe has no such probe.
pub fn listen_to_thread_names(skel: &LayoutSkel<'_>, target: &Target) -> Result<Link> {
    attach_pyusdt(&skel.progs.on_thread, target, "thread")
}

/// The Python thread names told so far by the processes `pids`, by thread
/// id.
pub fn thread_names(
    skel: &LayoutSkel<'_>,
    pids: &std::collections::BTreeSet<u32>,
) -> Result<std::collections::BTreeMap<u32, String>> {
    let mut out = std::collections::BTreeMap::new();
    for (tid, n) in
        crate::bpf::maps::entries::<u32, types::py_thread_name>(&skel.maps.py_thread_names)?
    {
        if pids.contains(&n.tgid) {
            let len = (n.len as usize).min(n.name.len());
            let bytes: Vec<u8> = n.name[..len].iter().map(|&c| c as u8).collect();
            out.insert(tid, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    Ok(out)
}

/// Adds the layout program's ring buffer to `builder`: each announcement
/// lands in `inbox`.
pub fn watch<'a>(
    builder: &mut RingBufferBuilder<'a, 'static>,
    skel: &'a LayoutSkel<'_>,
    inbox: &Inbox,
) -> Result<()> {
    let sink = Rc::clone(inbox);
    builder
        .add(&skel.maps.layout_events, move |data: &[u8]| {
            let mut e = Event::default();
            if plain::copy_from_bytes(&mut e, data).is_ok() {
                sink.borrow_mut().push(e);
            }
            0
        })
        .context("watch the layout ring buffer")?;
    Ok(())
}

/// The layout an announcement carries, if this profiler can read it.
pub fn accept(e: &Event) -> Result<Layout> {
    if e.read_error != 0 {
        bail!(
            "could not read the layout out of process {} (error {})",
            e.pid,
            e.read_error
        );
    }
    check(e.pid, &e.layout, e.announced_size)?;
    Ok(e.layout)
}

/// A target's layout announcements, as they come: the link that asks for
/// them (each tick of the target's poll thread announces while it lives)
/// and the ring buffer they arrive in.
pub struct Listener<'a> {
    target: &'a Target,
    _link: Link,
    ring: libbpf_rs::RingBuffer<'a>,
    inbox: Inbox,
}

impl std::fmt::Debug for Listener<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("pid", &self.target.pid)
            .finish()
    }
}

impl<'a> Listener<'a> {
    /// Asks `target` for its layout with the layout program `skel`.
    pub fn attach(skel: &'a LayoutSkel<'_>, target: &'a Target) -> Result<Self> {
        let link = attach(skel, target)?;
        let inbox = Inbox::default();
        let mut builder = RingBufferBuilder::new();
        watch(&mut builder, skel, &inbox)?;
        let ring = builder.build().context("build the layout ring buffer")?;
        Ok(Listener {
            target,
            _link: link,
            ring,
            inbox,
        })
    }

    /// Waits up to `timeout` for `n` more announcements (while the target
    /// lives); the last of them, or None.
    pub fn wait(&self, n: usize, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        let mut last = None;
        loop {
            match self.ring.poll(Duration::from_millis(50)) {
                Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
                r => r.context("poll the layout ring buffer")?,
            }
            for e in self.inbox.borrow_mut().drain(..) {
                seen += 1;
                last = Some(e);
            }
            if seen >= n {
                return Ok(last);
            }
            if !self.target.alive() || Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Whether the target still runs.
    pub fn alive(&self) -> bool {
        self.target.alive()
    }

    /// Forgets the announcements that came so far.
    pub fn forget(&self) -> Result<()> {
        self.ring.consume().context("poll the layout ring buffer")?;
        self.inbox.borrow_mut().clear();
        Ok(())
    }

    /// The first announcement, within `timeout`, or why none came.
    pub fn layout(&self, timeout: Duration) -> Result<Layout> {
        if let Some(e) = self.wait(1, timeout)? {
            return accept(&e);
        }
        let target = self.target;
        if !target.alive() {
            bail!(
                "process {} exited before it announced its layout",
                target.pid
            );
        }
        bail!(
            "process {} ({}) did not announce its layout within {:.1}s: pyusdt is loaded but \
             not enabled (start the program with `python -m pyusdt`, or call \
             `pyusdt.enable()`), or its poll thread is stopped",
            target.pid,
            target.comm,
            timeout.as_secs_f64()
        )
    }
}

/// Attaches to `pyusdt:layout` in `target` and waits up to `timeout` for its
/// announcement.
pub fn receive(target: &Target, timeout: Duration) -> Result<Layout> {
    let mut storage = MaybeUninit::uninit();
    let skel = open(&mut storage)?;
    let listener = Listener::attach(&skel, target)?;
    let layout = listener.layout(timeout);
    drop(listener);
    layout
}

/// `pyusdt-prof layout`: the layout `target` announced (or that was
/// `derived`), as text (one field a line) or as JSON.
pub fn printout(target: &Target, l: &Layout, derived: bool, json: bool) -> String {
    use std::fmt::Write as _;
    if json {
        return format!("{}\n", to_json(l));
    }
    let source = if derived {
        "found without pyusdt"
    } else {
        "announced by pyusdt"
    };
    let mut out = format!(
        "process {} ({}): Python {}, pyusdt layout v{} ({source})\n",
        target.pid,
        target.comm,
        python_version(l),
        l.version
    );
    for (name, value) in describe(l) {
        let _ = writeln!(out, "  {name:<26} {value}");
    }
    out
}

/// Every field of a layout, by name, as JSON.
pub fn to_json(l: &Layout) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    macro_rules! put {
        ($($f:ident),*) => { $( m.insert(stringify!($f).into(), l.$f.into()); )* };
    }
    for_each_layout_field!(put);
    serde_json::Value::Object(m)
}

/// Every field of a layout in declaration order, for people: addresses and
/// the magic in hex, absent offsets as `-`.
pub fn describe(l: &Layout) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    macro_rules! put {
        ($($f:ident),*) => { $(
            let name = stringify!($f);
            let v = u64::from(l.$f);
            let text = if name.ends_with("_addr") || name == "magic" || name == "flags" {
                format!("{v:#x}")
            } else if v == u64::from(contract::NO_OFFSET) {
                "-".to_string()
            } else {
                v.to_string()
            };
            rows.push((name, text));
        )* };
    }
    for_each_layout_field!(put);
    rows
}

/// The interpreter version a layout names, as `3.12.1`.
pub fn python_version(l: &Layout) -> String {
    let v = l.py_version_hex;
    format!("{}.{}.{}", v >> 24, (v >> 16) & 0xff, (v >> 8) & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(flags: u32) -> Layout {
        Layout {
            magic: contract::MAGIC,
            version: contract::VERSION,
            size: std::mem::size_of::<Layout>() as u32,
            py_version_hex: 0x030e_00f0,
            flags,
            frame_code: 0,
            ..Default::default()
        }
    }

    #[test]
    fn a_free_threaded_interpreter_is_refused_in_one_line() {
        let size = std::mem::size_of::<Layout>() as u64;
        assert!(check(7, &layout(0), size).is_ok());
        let err = check(7, &layout(contract::F_FREE_THREADED), size).unwrap_err();
        assert_eq!(
            err.to_string(),
            "process 7 runs a free-threaded CPython 3.14.0: free-threaded CPython is not \
             supported yet"
        );
        assert!(check(7, &layout(0), size - 8).is_err());
    }
}
