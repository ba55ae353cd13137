//! Which probes and syscalls a trace attaches to: probe specs
//! (`provider:name(types)`, with globs) resolved against the USDT notes of
//! every file the process maps, each probe's argument types, and syscall
//! names.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use pyusdt_contract::args::{parse_argtypes, ArgType, ARGTYPES_SECTION};
use pyusdt_contract::probes::arg_types as builtin_types;

use pyusdt_contract::trace::{MAX_ARGS, MAX_PROBES, MAX_SYSCALLS};

use crate::profile::syscalls;
use crate::target::{self, elf, usdt};
use crate::Result;

/// Which probes to trace: `provider:name`, `name` (any provider), or either
/// with argument types, `provider:name(int,str)`. Provider and name may
/// hold `*`, which matches any text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The provider, or None for any.
    pub provider: Option<String>,
    /// The probe's name (may hold `*`).
    pub name: String,
    /// The arguments' types, if given: these many arguments are read.
    pub types: Option<Vec<ArgType>>,
}

impl ProbeSpec {
    /// Whether this spec names probe `provider:name`.
    pub fn matches(&self, provider: &str, name: &str) -> bool {
        self.provider.as_deref().is_none_or(|p| glob(p, provider)) && glob(&self.name, name)
    }
}

impl FromStr for ProbeSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<ProbeSpec, String> {
        let (head, types) = match s.split_once('(') {
            None => (s, None),
            Some((head, rest)) => {
                let Some(inner) = rest.strip_suffix(')') else {
                    return Err(format!("`{s}`: the argument types end with `)`"));
                };
                let mut types = Vec::new();
                if !inner.trim().is_empty() {
                    for t in inner.split(',') {
                        types.push(ArgType::parse(t).ok_or_else(|| {
                            format!("`{s}`: `{}` is not an argument type (int or str)", t.trim())
                        })?);
                    }
                }
                if types.len() > MAX_ARGS {
                    return Err(format!("`{s}`: at most {MAX_ARGS} arguments"));
                }
                (head, Some(types))
            }
        };
        let (provider, name) = match head.split_once(':') {
            Some((p, n)) => (Some(p), n),
            None => (None, head),
        };
        let bad = |part: &str| {
            part.is_empty() || part.chars().any(|c| c.is_whitespace() || ":()".contains(c))
        };
        if bad(name) || provider.is_some_and(bad) {
            return Err(format!(
                "`{s}` is not a probe: write provider:name, name, or provider:name(int,str)"
            ));
        }
        Ok(ProbeSpec {
            provider: provider.map(str::to_string),
            name: name.to_string(),
            types,
        })
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.provider {
            write!(f, "{p}:")?;
        }
        write!(f, "{}", self.name)?;
        if let Some(t) = &self.types {
            write!(f, "({})", type_list(t))?;
        }
        Ok(())
    }
}

fn type_list(types: &[ArgType]) -> String {
    types.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
}

/// A trace asked for something the process does not have: a caller's
/// mistake (the command line exits with 2 on it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceError {
    /// No probe of the process matches a spec.
    NoMatch {
        /// The process.
        pid: u32,
        /// The spec, as given.
        spec: String,
        /// Every `provider:name` the process carries.
        carried: Vec<String>,
        /// It runs Python without pyusdt (whose probes, and app-defined
        /// ones, come with it).
        without_pyusdt: bool,
    },
    /// A syscall name that x86_64 does not have.
    UnknownSyscall(String),
    /// Neither probes nor syscalls.
    Nothing,
    /// More probes matched than one trace attaches.
    TooMany(usize),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::NoMatch {
                pid,
                spec,
                without_pyusdt: true,
                ..
            } => write!(
                f,
                "no probe matches {spec}: pyusdt's probes and app-defined probes need pyusdt, \
                 and process {pid} runs Python without it: start the program with `python -m \
                 pyusdt app.py` (or `-m module`), or call `import pyusdt; pyusdt.enable()` in it"
            ),
            TraceError::NoMatch {
                pid, spec, carried, ..
            } if carried.is_empty() => {
                write!(
                    f,
                    "no probe matches {spec}: process {pid} carries no USDT probes"
                )
            }
            TraceError::NoMatch {
                pid, spec, carried, ..
            } => write!(
                f,
                "no probe matches {spec}; process {pid} carries {} (pyusdt-prof list -p {pid})",
                carried.join(", ")
            ),
            TraceError::UnknownSyscall(s) => write!(f, "`{s}` is not a syscall"),
            TraceError::Nothing => write!(f, "nothing to trace: name a probe, or --syscalls"),
            TraceError::TooMany(n) => write!(
                f,
                "{n} probes match; one trace attaches at most {MAX_PROBES}: name fewer"
            ),
        }
    }
}

impl std::error::Error for TraceError {}

/// Whether `text` matches `pattern`, where `*` matches any text.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// A probe as a trace attaches to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Its provider.
    pub provider: String,
    /// Its name.
    pub name: String,
    /// The file that holds it, as the process mapped it.
    pub file: String,
    /// The types of the arguments read.
    pub types: Vec<ArgType>,
}

impl Resolved {
    /// `provider:name(types)`.
    pub fn label(&self) -> String {
        format!(
            "{}:{}({})",
            self.provider,
            self.name,
            type_list(&self.types)
        )
    }
}

/// The probes of process `pid` that `specs` name, each once per file that
/// holds it, with the types of its arguments; a [`TraceError::NoMatch`]
/// for a spec that names none.
pub fn resolve(pid: u32, specs: &[ProbeSpec]) -> Result<Vec<Resolved>> {
    let probes = usdt::list(pid)?;
    let mut argtypes: HashMap<String, HashMap<(String, String), Vec<ArgType>>> = HashMap::new();
    let mut out: Vec<Resolved> = Vec::new();
    for spec in specs {
        let mut matched = false;
        for p in probes.iter().filter(|p| spec.matches(&p.provider, &p.name)) {
            matched = true;
            if out
                .iter()
                .any(|r| r.file == p.file && r.provider == p.provider && r.name == p.name)
            {
                continue;
            }
            let types = match &spec.types {
                Some(t) => t.clone(),
                None => {
                    let section = argtypes.entry(p.file.clone()).or_insert_with(|| {
                        std::fs::read(target::through_root(pid, &p.file))
                            .ok()
                            .and_then(|image| {
                                elf::section(&image, ARGTYPES_SECTION)
                                    .map(|b| parse_argtypes(&String::from_utf8_lossy(b)))
                            })
                            .unwrap_or_default()
                    });
                    section
                        .get(&(p.provider.clone(), p.name.clone()))
                        .cloned()
                        .or_else(|| builtin_types(&p.provider, &p.name).map(<[_]>::to_vec))
                        .unwrap_or_else(|| {
                            let n = p.args.split_whitespace().count().min(MAX_ARGS);
                            vec![ArgType::Int; n]
                        })
                }
            };
            out.push(Resolved {
                provider: p.provider.clone(),
                name: p.name.clone(),
                file: p.file.clone(),
                types,
            });
        }
        if !matched {
            let carried: BTreeSet<String> = probes
                .iter()
                .map(|p| format!("{}:{}", p.provider, p.name))
                .collect();
            return Err(TraceError::NoMatch {
                pid,
                spec: spec.to_string(),
                carried: carried.into_iter().collect(),
                without_pyusdt: matches!(target::lookup(pid), Ok(target::Lookup::WithoutPyusdt(_))),
            }
            .into());
        }
    }
    if out.len() > MAX_PROBES {
        return Err(TraceError::TooMany(out.len()).into());
    }
    Ok(out)
}

/// The x86_64 number of each syscall named; a [`TraceError`] for a name
/// that is none.
pub fn syscall_numbers(names: &[String]) -> Result<Vec<i64>> {
    names
        .iter()
        .map(|n| {
            (0..MAX_SYSCALLS)
                .find(|&nr| syscalls::name(nr) == Some(n.as_str()))
                .ok_or_else(|| TraceError::UnknownSyscall(n.clone()).into())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> ProbeSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_probe_specs() {
        assert_eq!(
            spec("pyusdt:PY_START"),
            ProbeSpec {
                provider: Some("pyusdt".into()),
                name: "PY_START".into(),
                types: None
            }
        );
        assert_eq!(
            spec("tick"),
            ProbeSpec {
                provider: None,
                name: "tick".into(),
                types: None
            }
        );
        assert_eq!(
            spec("myapp:tick(int, str)"),
            ProbeSpec {
                provider: Some("myapp".into()),
                name: "tick".into(),
                types: Some(vec![ArgType::Int, ArgType::Str])
            }
        );
        assert_eq!(spec("tick()").types, Some(vec![]));
        assert_eq!(spec("py*:PY_*").to_string(), "py*:PY_*");
        assert_eq!(
            spec("myapp:tick(int,str)").to_string(),
            "myapp:tick(int,str)"
        );
        for bad in [
            "",
            ":",
            "a:",
            ":b",
            "a:b:c",
            "a b",
            "a:b(int",
            "a:b(float)",
            "a:b(int)x",
        ] {
            assert!(bad.parse::<ProbeSpec>().is_err(), "{bad:?} parsed");
        }
        let err = "a:b(int,float)".parse::<ProbeSpec>().unwrap_err();
        assert_eq!(
            err,
            "`a:b(int,float)`: `float` is not an argument type (int or str)"
        );
        let many = format!("a:b({})", vec!["int"; 13].join(","));
        assert!(many.parse::<ProbeSpec>().is_err());
    }

    #[test]
    fn specs_match_by_provider_and_glob() {
        assert!(spec("PY_START").matches("pyusdt", "PY_START"));
        assert!(spec("PY_START").matches("other", "PY_START"));
        assert!(!spec("pyusdt:PY_START").matches("other", "PY_START"));
        assert!(spec("pyusdt:PY_*").matches("pyusdt", "PY_RETURN"));
        assert!(!spec("pyusdt:PY_*").matches("pyusdt", "LINE"));
        assert!(spec("*:span_*").matches("pyusdt", "span_end"));
        assert!(spec("*").matches("x", "y"));
        assert!(glob("a*b*c", "abc") && glob("a*b*c", "a-b-c") && !glob("a*b*c", "acb"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn parses_argtypes_sections() {
        let t = parse_argtypes(
            "myapp:tick:int,str\nmyapp:empty:\nmyapp:bad:float\nnot a line\nother:x:str\n",
        );
        use ArgType::{Int, Str};
        let get = |p: &str, n: &str| t.get(&(p.to_string(), n.to_string())).cloned();
        assert_eq!(get("myapp", "tick"), Some(vec![Int, Str]));
        assert_eq!(get("myapp", "empty"), Some(vec![]));
        assert_eq!(get("other", "x"), Some(vec![Str]));
        assert_eq!(get("myapp", "bad"), None);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn knows_pyusdt_probes_and_syscalls() {
        use ArgType::{Int, Str};
        assert_eq!(
            builtin_types("pyusdt", "PY_START"),
            Some(&[Str, Str, Int, Int][..])
        );
        assert_eq!(builtin_types("pyusdt", "span_end"), Some(&[Str, Int][..]));
        assert_eq!(builtin_types("myapp", "PY_START"), None);
        assert_eq!(
            syscall_numbers(&["read".into(), "write".into()]).ok(),
            Some(vec![0, 1])
        );
        let err = syscall_numbers(&["wirte".into()]).unwrap_err();
        assert_eq!(err.to_string(), "`wirte` is not a syscall");
    }
}
