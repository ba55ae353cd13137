//! The floor of `make bench`: attaches handlers that do nothing to the
//! recorder's kernel attach points (raw_syscalls enter and exit,
//! sched_switch, sched_waking, and the cpu-clock sampler at 99 Hz), says
//! `attached` on stdout, and holds them until stdin closes.
//!
//! usage: cargo run --release --example floor

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
    let _links = [
        p.floor_enter.attach()?,
        p.floor_exit.attach()?,
        p.floor_switch.attach()?,
        p.floor_waking.attach()?,
    ];
    let _samplers = pyusdt_prof::bpf::load::attach_sampler(&p.floor_sample, 99)?;
    println!("attached");
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}
