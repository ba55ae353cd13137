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
use pyusdt_layout::for_each_layout_field;

use crate::bpf::layout::{types, LayoutSkel, LayoutSkelBuilder};
use crate::target::Target;
use crate::Result;

/// The layout struct as the BPF side sees it (the skeleton's type, built
/// from `bpf/pyusdt_layout.h`).
pub type Layout = types::pyusdt_layout;

/// Checks that an announcement is one this profiler can read.
pub fn check(pid: u32, l: &Layout, announced_size: u64) -> Result<()> {
    if l.magic != pyusdt_layout::MAGIC {
        bail!("process {pid} announced something that is not a pyusdt layout");
    }
    let size = std::mem::size_of::<Layout>() as u64;
    if l.version != pyusdt_layout::VERSION || announced_size != size || u64::from(l.size) != size {
        bail!(
            "process {pid} runs a pyusdt with layout version {} ({} bytes); this pyusdt-prof \
             reads version {} ({size} bytes): use the pyusdt and pyusdt-prof of one release",
            l.version,
            announced_size,
            pyusdt_layout::VERSION
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
    open.load().context("load the layout BPF program")
}

/// Attaches the layout program to `pyusdt:layout` in `target`: its poll
/// thread announces the layout within a tick, and again each tick while
/// the link lives.
pub fn attach(skel: &LayoutSkel<'_>, target: &Target) -> Result<Link> {
    let path = target.extension_path();
    skel.progs
        .on_layout
        .attach_usdt(target.pid as i32, &path, "pyusdt", "layout")
        .with_context(|| format!("attach to pyusdt:layout in {}", path.display()))
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

/// Attaches to `pyusdt:layout` in `target` and waits up to `timeout` for its
/// announcement.
pub fn receive(target: &Target, timeout: Duration) -> Result<Layout> {
    let mut storage = MaybeUninit::uninit();
    let skel = open(&mut storage)?;
    let _link = attach(&skel, target)?;
    let inbox = Inbox::default();
    let mut builder = RingBufferBuilder::new();
    watch(&mut builder, &skel, &inbox)?;
    let ring = builder.build().context("build the layout ring buffer")?;

    let deadline = Instant::now() + timeout;
    loop {
        match ring.poll(Duration::from_millis(50)) {
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            r => r.context("poll the layout ring buffer")?,
        }
        if let Some(e) = inbox.borrow_mut().pop() {
            return accept(&e);
        }
        if !target.alive() {
            bail!(
                "process {} exited before it announced its layout",
                target.pid
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "process {} ({}) did not announce its layout within {:.1}s: pyusdt is loaded \
                 but not enabled (start the program with `python -m pyusdt`, or call \
                 `pyusdt.enable()`), or its poll thread is stopped",
                target.pid,
                target.comm,
                timeout.as_secs_f64()
            );
        }
    }
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
            } else if name != "reserved" && v == u64::from(pyusdt_layout::NO_OFFSET) {
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
