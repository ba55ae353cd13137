//! Flame graph SVGs from folded stacks, drawn with inferno, with kernel
//! frames (`_[k]`) coloured apart from Python frames.

use std::io::{self, Write};

use anyhow::Context as _;
use inferno::flamegraph::{self, color::MultiPalette, Options, Palette};

use crate::Result;

/// What the values of the folded stacks count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds of time; shown in the SVG as milliseconds (`ms`).
    Nanoseconds,
    /// Sample counts.
    Samples,
    /// Call counts.
    Calls,
}

impl Unit {
    /// The unit's name as the SVG shows it.
    pub fn count_name(self) -> &'static str {
        match self {
            Unit::Nanoseconds => "ms",
            Unit::Samples => "samples",
            Unit::Calls => "calls",
        }
    }

    /// The factor inferno scales values by for display: nanoseconds to
    /// milliseconds. Inferno rounds the scaled value to an integer, so a
    /// frame under half a millisecond reads `0 ms`; widths are exact.
    fn factor(self) -> f64 {
        match self {
            Unit::Nanoseconds => 1e-6,
            Unit::Samples | Unit::Calls => 1.0,
        }
    }
}

/// How to draw a flame graph.
#[derive(Debug, Clone, PartialEq)]
pub struct FlameOptions {
    /// The title at the top of the graph.
    pub title: String,
    /// An optional second line under the title.
    pub subtitle: Option<String>,
    /// What the stack values count.
    pub unit: Unit,
}

impl Default for FlameOptions {
    fn default() -> Self {
        Self {
            title: "Flame Graph".to_string(),
            subtitle: None,
            unit: Unit::Samples,
        }
    }
}

/// The palette: inferno's `java` palette.
///
/// Only the `java`, `js` and `perl` palettes honour the `_[k]` annotation
/// (orange for kernel frames); `python`, `rust`, `hot` and the plain
/// palettes do not. Of those three, `java` separates our frames best:
/// Python frames, named `qualname (file.py:line)`, contain a `.` and come
/// out green; kernel frames `name_[k]` are orange; names with neither a
/// `.` nor a `/` (such as `syscall:read`) are red. With `js` Python frames
/// and `syscall:` labels would share aqua (both contain `:`); with `perl`
/// Python frames would be red, close to the orange.
const PALETTE: Palette = Palette::Multi(MultiPalette::Java);

/// Writes a flame graph SVG of `lines` to `out`.
///
/// Each line is a folded stack, `root;caller;callee value`, with kernel
/// frames suffixed `_[k]`. Lines need not be sorted, and equal stacks are
/// merged. Inferno shows kernel frames without their `_[k]` suffix: the
/// colour tells them apart. Colours are chosen from a hash of each frame name
/// (inferno's `deterministic` option), so equal input gives an equal SVG.
///
/// With no stack counts (no lines, or all values zero) inferno draws a
/// small SVG that reads "ERROR: No valid input provided to flamegraph";
/// that SVG is written and `Ok` returned.
pub fn write_svg<W: Write>(lines: &[String], opts: &FlameOptions, mut out: W) -> Result<()> {
    let mut options = Options::default();
    options.title = opts.title.clone();
    options.subtitle = opts.subtitle.clone();
    options.count_name = opts.unit.count_name().to_string();
    options.factor = opts.unit.factor();
    options.colors = PALETTE;
    options.deterministic = true;

    let mut svg = Vec::new();
    let result = flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg);
    match result {
        Ok(()) => {}
        // No stack counts: inferno has written its complete "no valid
        // input" SVG before returning this error.
        Err(e) if e.kind() == io::ErrorKind::InvalidData && svg.ends_with(b"</svg>") => {}
        Err(e) => return Err(e).context("failed to draw the flame graph"),
    }
    out.write_all(&svg)
        .and_then(|()| out.flush())
        .context("failed to write the flame graph")
}

/// Writes a differential flame graph of two sets of folded stacks: the
/// shape is `after`; a frame is red where it grew from `before` and blue
/// where it shrank, the deeper the more (inferno's differential graph).
/// With `normalize`, `before` is first scaled to `after`'s total, so that
/// a longer recording does not make everything red.
pub fn write_diff_svg<W: Write>(
    before: &[String],
    after: &[String],
    normalize: bool,
    opts: &FlameOptions,
    out: W,
) -> Result<()> {
    let text = |lines: &[String]| {
        let mut t = lines.join("\n");
        t.push('\n');
        t
    };
    let mut diff = Vec::new();
    let o = inferno::differential::Options {
        normalize,
        strip_hex: false,
    };
    inferno::differential::from_readers(
        o,
        text(before).as_bytes(),
        text(after).as_bytes(),
        &mut diff,
    )
    .context("failed to compare the profiles")?;
    let lines: Vec<String> = String::from_utf8_lossy(&diff)
        .lines()
        .map(str::to_string)
        .collect();
    write_svg(&lines, opts, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(lines: &[&str], opts: &FlameOptions) -> String {
        let lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        write_svg(&lines, opts, &mut out).expect("write_svg");
        String::from_utf8(out).expect("utf-8 svg")
    }

    /// The `fill` of the rectangle drawn for the frame named `name` (as
    /// shown: without an `_[k]` suffix).
    fn fill_of(svg: &str, name: &str) -> Option<String> {
        let title = svg.find(&format!("<title>{name} ("))?;
        let rest = &svg[title..];
        let fill = rest.find("fill=\"")? + "fill=\"".len();
        let end = rest[fill..].find('"')?;
        Some(rest[fill..fill + end].to_string())
    }

    #[test]
    fn draws_title_frames_and_unit() {
        let opts = FlameOptions {
            title: "CPU of app.py".to_string(),
            subtitle: None,
            unit: Unit::Nanoseconds,
        };
        let svg = render(
            &[
                "<module> (app.py:1);main (app.py:10);work (app.py:20) 30000000",
                "<module> (app.py:1);main (app.py:10) 10000000",
            ],
            &opts,
        );
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("CPU of app.py"));
        assert!(svg.contains("work (app.py:20)"));
        // 30 ms of 40: values are shown in milliseconds.
        assert!(svg.contains("30 ms"), "{svg}");
        assert!(svg.contains("40 ms"), "{svg}");

        let calls = FlameOptions {
            unit: Unit::Calls,
            ..opts
        };
        let svg = render(&["a (x.py:1);b (x.py:2) 7"], &calls);
        assert!(svg.contains("7 calls"), "{svg}");
    }

    #[test]
    fn kernel_frames_are_coloured_apart() {
        let svg = render(
            &["main (app.py:10);syscall:read;vfs_read_[k];schedule_[k] 5"],
            &FlameOptions::default(),
        );
        let python = fill_of(&svg, "main (app.py:10)").expect("python frame");
        // inferno shows kernel frames without their `_[k]` suffix.
        let kernel = fill_of(&svg, "vfs_read").expect("kernel frame");
        let kernel2 = fill_of(&svg, "schedule").expect("kernel frame");
        assert_ne!(python, kernel);
        // Orange has no blue component; the green of Python frames does.
        assert!(kernel.ends_with(",0)"), "{kernel}");
        assert!(kernel2.ends_with(",0)"), "{kernel2}");
        assert!(!python.ends_with(",0)"), "{python}");
    }

    #[test]
    fn same_input_same_svg() {
        let lines = ["a (x.py:1);b (x.py:2) 3", "a (x.py:1);c_[k] 4"];
        let opts = FlameOptions::default();
        assert_eq!(render(&lines, &opts), render(&lines, &opts));
    }

    #[test]
    fn differences_are_red_and_blue() {
        let before = vec![
            "a (x.py:1);old (x.py:2) 90".to_string(),
            "a (x.py:1);same (x.py:3) 10".to_string(),
        ];
        let after = vec![
            "a (x.py:1);new (x.py:4) 90".to_string(),
            "a (x.py:1);same (x.py:3) 10".to_string(),
        ];
        let mut out = Vec::new();
        write_diff_svg(&before, &after, false, &FlameOptions::default(), &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        // Grown frames are red (no blue), and the unchanged one is white.
        let new = fill_of(&svg, "new (x.py:4)").expect("new frame");
        assert!(new.starts_with("rgb(255,"), "{new}");
        let same = fill_of(&svg, "same (x.py:3)").expect("same frame");
        assert_eq!(same, "rgb(250,250,250)");
        assert!(
            fill_of(&svg, "old (x.py:2)").is_none(),
            "only after's shape is drawn"
        );
    }

    #[test]
    fn empty_input_says_so() {
        let svg = render(&[], &FlameOptions::default());
        assert!(svg.starts_with("<?xml"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("No valid input"), "{svg}");
    }
}
