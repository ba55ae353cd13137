//! Probe argument types, and the `.pyusdt.argtypes` ELF section that lists
//! them for the probes of an object (`pyusdt.Probe`'s generated objects
//! carry one; `pyusdt-prof trace` reads it).
//!
//! The section holds one UTF-8 line per probe,
//! `provider:name:type,type,...\n`, each type `int` or `str`.

use std::collections::HashMap;

/// The ELF section that lists a file's probes' argument types.
pub const ARGTYPES_SECTION: &str = ".pyusdt.argtypes";

/// The type of a probe argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgType {
    /// A signed 64-bit integer (`-8@%reg` in the SDT note).
    Int,
    /// A `const char *` to NUL-terminated text, UTF-8 expected (`8@%reg`).
    Str,
}

impl ArgType {
    /// `int` or `str`: the name in `.pyusdt.argtypes`.
    pub fn name(self) -> &'static str {
        match self {
            ArgType::Int => "int",
            ArgType::Str => "str",
        }
    }

    /// The type named `int` or `str`.
    pub fn parse(s: &str) -> Option<ArgType> {
        match s.trim() {
            "int" => Some(ArgType::Int),
            "str" => Some(ArgType::Str),
            _ => None,
        }
    }

    /// The size an SDT note gives an argument of this type (`-8`: a
    /// signed 8-byte integer; `8`: an unsigned one, a pointer).
    pub fn sdt_size(self) -> &'static str {
        match self {
            ArgType::Int => "-8",
            ArgType::Str => "8",
        }
    }
}

/// The line of `.pyusdt.argtypes` that lists probe `provider:name`'s
/// argument types.
pub fn argtypes_line(provider: &str, name: &str, types: &[ArgType]) -> String {
    let types: Vec<&str> = types.iter().map(|t| t.name()).collect();
    format!("{provider}:{name}:{}\n", types.join(","))
}

/// The argument types of each probe an `.pyusdt.argtypes` section lists,
/// by (provider, name); lines that do not parse are skipped.
pub fn parse_argtypes(text: &str) -> HashMap<(String, String), Vec<ArgType>> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.trim_end_matches('\r').splitn(3, ':');
        let (Some(provider), Some(name), Some(types)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if provider.is_empty() || name.is_empty() {
            continue;
        }
        let types: Option<Vec<ArgType>> = if types.trim().is_empty() {
            Some(Vec::new())
        } else {
            types.split(',').map(ArgType::parse).collect()
        };
        if let Some(t) = types {
            out.insert((provider.to_string(), name.to_string()), t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_back_as_written() {
        let text = argtypes_line("app", "req", &[ArgType::Str, ArgType::Int])
            + &argtypes_line("app", "tick", &[])
            + "broken line\napp:bad:float\n";
        let m = parse_argtypes(&text);
        assert_eq!(
            m[&("app".into(), "req".into())],
            [ArgType::Str, ArgType::Int]
        );
        assert_eq!(m[&("app".into(), "tick".into())], []);
        assert_eq!(m.len(), 2);
    }
}
