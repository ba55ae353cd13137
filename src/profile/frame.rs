//! The name of a Python frame, as profiles hold it and every reader and
//! exporter reads it: `qualname (file:line)`, the line being the code's
//! first line, or with `record --lines` the line the frame is at.

use std::fmt;
use std::str::FromStr;

/// `s` with its control characters written as escapes (`\n`, `\t`,
/// `\r`, `\xNN`), so that a name never breaks a line of
/// folded text or a report, nor an SVG: code, file, thread and process
/// names come from the program and may hold anything. A backslash stays
/// as it is; other characters too.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // Control characters are all below U+0100.
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
}

/// A Python frame's name taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyFrame {
    /// The code object's `co_qualname`.
    pub qualname: String,
    /// Its file.
    pub file: String,
    /// Its first line, or the line the frame is at.
    pub line: i64,
}

impl PyFrame {
    /// The name of a frame of `qualname` in `file` at `line`, control
    /// characters in them escaped ([`printable`]).
    pub fn name(qualname: &str, file: &str, line: impl fmt::Display) -> String {
        format!("{} ({}:{line})", printable(qualname), printable(file))
    }

    /// `qualname (file:line)` split into its parts, if it has that shape.
    pub fn split(name: &str) -> Option<(&str, &str, i64)> {
        // A qualname has no " (" in it; a file name may.
        let (qualname, rest) = name.split_once(" (")?;
        let (file, line) = rest.strip_suffix(')')?.rsplit_once(':')?;
        Some((qualname, file, line.parse().ok()?))
    }

    /// `qualname (file.py:line)` with the file's directories left out, for
    /// people; other frame names as they are.
    pub fn short(name: &str) -> String {
        match PyFrame::split(name) {
            Some((q, file, line)) => {
                PyFrame::name(q, file.rsplit('/').next().unwrap_or(file), line)
            }
            None => name.to_string(),
        }
    }
}

impl fmt::Display for PyFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&PyFrame::name(&self.qualname, &self.file, self.line))
    }
}

/// A frame name that is not `qualname (file:line)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotPython;

impl fmt::Display for NotPython {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a Python frame name, qualname (file:line)")
    }
}

impl std::error::Error for NotPython {}

impl FromStr for PyFrame {
    type Err = NotPython;

    fn from_str(name: &str) -> Result<PyFrame, NotPython> {
        let (qualname, file, line) = PyFrame::split(name).ok_or(NotPython)?;
        Ok(PyFrame {
            qualname: qualname.to_string(),
            file: file.to_string(),
            line,
        })
    }
}

/// The program's frames of a Python stack (root first) whose functions
/// `function` names: those after the launcher's (runpy and pyusdt's own
/// `__main__`, which `python -m pyusdt` adds under every program), and
/// without pyusdt's own wrappers (the `@pyusdt.span` decorator).
pub fn program_frames<'a, T>(
    frames: &'a [T],
    function: impl Fn(&T) -> &str + 'a,
) -> impl Iterator<Item = &'a T> + 'a {
    let start = frames
        .iter()
        .rposition(|f| function(f).contains("/pyusdt/__main__.py:"))
        .map_or(0, |i| i + 1);
    frames[start..]
        .iter()
        .filter(move |f| !function(f).contains("/pyusdt/__init__.py:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python_frame(name: &str) -> Option<(&str, &str, i64)> {
        PyFrame::split(name)
    }

    #[test]
    fn splits_python_frames() {
        assert_eq!(
            python_frame("C.f (/a/b.py:12)"),
            Some(("C.f", "/a/b.py", 12))
        );
        assert_eq!(
            python_frame("<lambda> (x (1).py:3)"),
            Some(("<lambda>", "x (1).py", 3))
        );
        assert_eq!(python_frame("schedule_[k]"), None);
        assert_eq!(python_frame("syscall:read"), None);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain ünïcode; ok"), "plain ünïcode; ok");
        assert_eq!(
            printable("a\nb\tc\rd\x1be\u{7f}\u{85}"),
            "a\\nb\\tc\\rd\\x1be\\x7f\\x85"
        );
        assert_eq!(printable("\u{2028}"), "\u{2028}");
        assert_eq!(
            PyFrame::name("f\ng", "/tmp/a\u{1}.py", 3),
            "f\\ng (/tmp/a\\x01.py:3)"
        );
    }

    #[test]
    fn names_read_back_as_written() {
        let f: PyFrame = "C.f (/a/b.py:12)".parse().expect("a Python frame");
        assert_eq!(f.to_string(), "C.f (/a/b.py:12)");
        assert_eq!(PyFrame::short(&f.to_string()), "C.f (b.py:12)");
        assert_eq!("syscall:read".parse::<PyFrame>(), Err(NotPython));
    }
}
