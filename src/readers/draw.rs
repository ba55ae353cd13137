//! `pyusdt-prof flame` and `diff`: a view of a profile (or of two) folded
//! and drawn by [`super::flame`], with a title that says what it weighs.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::profile::{derived_path, write_atomic, Profile, Unit, ViewKind};
use crate::readers::flame::{self, FlameOptions};
use crate::Result;

/// The title and unit of a view's flamegraph.
pub fn options(view: ViewKind) -> FlameOptions {
    let unit = match view.unit() {
        Unit::Samples => flame::Unit::Samples,
        Unit::Nanoseconds => flame::Unit::Nanoseconds,
    };
    let what = match view {
        ViewKind::Cpu => "CPU samples",
        ViewKind::Offcpu => "off-CPU time",
        ViewKind::Syscall => "time in syscalls",
        ViewKind::Gil => "time waiting for the GIL, by holder",
        ViewKind::Calls => "time in every call, exact (self time per call path)",
        _ => "time waited, by waker",
    };
    FlameOptions {
        title: format!("{} view: {what} ({})", view.name(), unit.count_name()),
        subtitle: None,
        unit,
    }
}

/// Draws view `view` of the profile at `input` into `out` (default: the
/// profile's name with the view's, `.svg`); returns where.
pub fn flamegraph(
    input: &Path,
    out: Option<PathBuf>,
    view: ViewKind,
    merge_threads: bool,
    functions: bool,
) -> Result<PathBuf> {
    let p = Profile::read_as(input, functions)?;
    let lines = p.folded(view, false, merge_threads)?;
    let out = out.unwrap_or_else(|| derived_path(input, &format!("-{}.svg", view.name())));
    let mut opts = options(view);
    opts.subtitle = Some(format!(
        "{} (pid {}), Python {}",
        p.command.join(" "),
        p.pid,
        p.python
    ));
    write_atomic(&out, |w| flame::write_svg(&lines, &opts, w))?;
    Ok(out)
}

/// Draws the differential flamegraph of view `view` from `before` to
/// `after` into `output`, threads merged.
pub fn diff(
    before: &Path,
    after: &Path,
    output: &Path,
    view: ViewKind,
    normalize: bool,
    functions: bool,
) -> Result<()> {
    let lines = |path: &Path| -> Result<Vec<String>> {
        Profile::read_as(path, functions)?
            .folded(view, false, true)
            .with_context(|| format!("{}", path.display()))
    };
    let (lb, la) = (lines(before)?, lines(after)?);
    let mut opts = options(view);
    opts.title = format!("Differential {}", opts.title);
    opts.subtitle = Some(format!(
        "{} -> {}: red grew, blue shrank{}",
        before.display(),
        after.display(),
        if normalize { " (normalized)" } else { "" }
    ));
    write_atomic(output, |w| {
        flame::write_diff_svg(&lb, &la, normalize, &opts, w)
    })
}
