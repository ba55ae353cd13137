//! The floor of `make bench`: attaches handlers that do nothing to the
//! recorder's kernel attach points (raw_syscalls enter and exit,
//! sched_switch, sched_waking, and the cpu-clock sampler at 99 Hz), says
//! `attached` on stdout, and holds them until stdin closes.
//!
//! usage: cargo run --release --example floor [syscalls] [sched] [sampler]
//! (the attach points named; all of them without any)

use std::io::{BufRead, Write};
use std::mem::MaybeUninit;

use anyhow::Context;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use pyusdt_prof::bpf::floor::FloorSkelBuilder;

fn main() -> anyhow::Result<()> {
    let mut storage = MaybeUninit::uninit();
    let skel = FloorSkelBuilder::default()
        .open(&mut storage)?
        .load()
        .context("load the empty handlers")?;
    let p = &skel.progs;
    // Which attach points: all, or those named (syscalls, sched, sampler).
    let only: Vec<String> = std::env::args().skip(1).collect();
    let on = |what: &str| only.is_empty() || only.iter().any(|o| o == what);
    let mut links = Vec::new();
    if on("syscalls") {
        links.push(p.floor_enter.attach()?);
        links.push(p.floor_exit.attach()?);
    }
    if on("sched") {
        links.push(p.floor_switch.attach()?);
        links.push(p.floor_waking.attach()?);
    }
    let _samplers = if on("sampler") {
        pyusdt_prof::bpf::load::attach_sampler(&p.floor_sample, 99)?
    } else {
        Vec::new()
    };
    println!("attached");
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}
