//! What reads a profile: `report` (the numbers), `top` (a live view),
//! `flame` and `diff` ([`draw`], with inferno flamegraphs drawn from folded
//! lines by [`flame`]), and `export` (speedscope, Chrome trace, pprof,
//! folded).

pub mod draw;
pub mod export;
pub mod flame;
pub mod report;
pub mod top;
