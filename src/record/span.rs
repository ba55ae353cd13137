//! The span follower (`record --span NAME`, `bpf/span.bpf.c`), attached
//! to the target's `pyusdt:span_begin` and `span_end`: it keeps each
//! thread's depth inside span NAME where every view's handler looks, and
//! the spans' times.

use std::mem::MaybeUninit;

use anyhow::Context;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};

use crate::bpf::load::Shared;
use crate::bpf::maps::trimmed;
use crate::bpf::procs::types::time_hist;
use crate::bpf::span;
use crate::profile::SpanSummary;
use crate::target::Target;
use crate::Result;

/// The span follower (`record --span NAME`), attached to the target's
/// `pyusdt:span_begin` and `span_end`: it keeps each thread's depth inside
/// span `name` where every view's handler looks, and the spans' times.
pub fn load_span<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    shared: Shared<'_>,
    target: &Target,
    name: &str,
) -> Result<(span::SpanSkel<'o>, Vec<Link>)> {
    let mut open = span::SpanSkelBuilder::default()
        .open(storage)
        .context("open the span follower")?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the span follower has no rodata")?;
    ro.target_tgid = shared.pid;
    ro.follow = u8::from(shared.follow);
    for (d, s) in ro.span_name.iter_mut().zip(name.bytes()) {
        *d = s as _;
    }
    open.maps
        .targets
        .reuse_fd(shared.targets)
        .context("share the process table")?;
    open.maps
        .span_threads
        .reuse_fd(shared.span_threads)
        .context("share the threads inside the span")?;
    let skel = crate::errors::loaded("load the span follower", || open.load())?;
    let path = target.extension_path("record --span")?;
    let p = &skel.progs;
    let mut links = Vec::new();
    for (prog, probe) in [(&p.span_begin, "span_begin"), (&p.span_end, "span_end")] {
        links.push(
            prog.attach_usdt(target.pid as i32, &path, "pyusdt", probe)
                .with_context(|| {
                    format!(
                        "attach to pyusdt:{probe} in {} (a pyusdt without spans: rebuild it)",
                        path.display()
                    )
                })?,
        );
    }
    Ok((skel, links))
}

/// The spans a span follower saw end.
pub fn span_summary(s: &span::SpanSkel<'_>, name: &str) -> Result<SpanSummary> {
    let v = s
        .maps
        .span_times
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("read the spans' times")?
        .unwrap_or_default();
    let mut h = time_hist::default();
    plain::copy_from_bytes(&mut h, &v).map_err(|_| anyhow::anyhow!("a short span time"))?;
    Ok(SpanSummary {
        name: name.to_string(),
        count: h.count,
        total_ns: h.ns,
        hist: trimmed(&h.hist),
    })
}
