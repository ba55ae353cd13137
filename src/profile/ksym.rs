//! Kernel address symbolization with blazesym: kernel stack addresses to
//! function names, from `/proc/kallsyms` (or a `vmlinux` if blazesym finds one).

use std::collections::HashMap;

use blazesym::symbolize::source::{Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};

/// The kernel stack of thread `tid` of `pid`, which is not running: root
/// first, as addresses (from `/proc/PID/task/TID/stack`, whose
/// `function+offset` lines are turned back into addresses by
/// `/proc/kallsyms`). Empty where either is unreadable (not root).
pub fn task_stack(pid: u32, tid: u32) -> Vec<u64> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack")) else {
        return Vec::new();
    };
    let syms = kallsyms();
    let mut ips: Vec<u64> = text
        .lines()
        .filter_map(|line| {
            // "[<0>] do_sys_poll+0x1c2/0x4f0"
            let at = line.split_once("] ")?.1.split('/').next()?;
            let (name, off) = at.split_once("+0x")?;
            let base = syms.get(name)?;
            Some(base + u64::from_str_radix(off, 16).ok()?)
        })
        .collect();
    ips.reverse();
    ips
}

/// Text symbols of the running kernel by name (the first of each name),
/// read once; empty where the addresses are hidden.
fn kallsyms() -> &'static HashMap<String, u64> {
    static SYMS: std::sync::OnceLock<HashMap<String, u64>> = std::sync::OnceLock::new();
    SYMS.get_or_init(|| {
        let mut syms = HashMap::new();
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr != 0 && matches!(kind, "t" | "T") {
                syms.entry(name.to_string()).or_insert(addr);
            }
        }
        syms
    })
}

/// The running kernel's name for function `name`: `name` itself, else a
/// compiler's copy of it (`name.isra.0`, `name.constprop.0`); None where it
/// has none (inlined everywhere, or the addresses are hidden).
pub fn function_named(name: &str) -> Option<&'static str> {
    let syms = kallsyms();
    if let Some((k, _)) = syms.get_key_value(name) {
        return Some(k.as_str());
    }
    let prefix = format!("{name}.");
    syms.keys()
        .filter(|k| k.starts_with(&prefix))
        .min()
        .map(String::as_str)
}

/// Resolves kernel addresses to function names, caching each address.
///
/// It uses blazesym's kernel source: a `vmlinux` image if blazesym finds one
/// for the running kernel, with `/proc/kallsyms` as the fallback, so
/// kallsyms alone is enough. Reading real addresses from kallsyms takes
/// root (or `kptr_restrict` = 0); otherwise every address stays unresolved.
#[derive(Debug)]
pub struct KernelSymbolizer {
    symbolizer: Symbolizer,
    source: Source<'static>,
    cache: HashMap<u64, String>,
}

impl Default for KernelSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelSymbolizer {
    /// A symbolizer for the running kernel. Nothing is read until the first
    /// call to [`symbolize`](Self::symbolize).
    pub fn new() -> Self {
        // Only function names are wanted: no source lines, no inlined
        // functions, no DWARF from vmlinux (its ELF symbols suffice).
        let symbolizer = Symbolizer::builder()
            .enable_code_info(false)
            .enable_inlined_fns(false)
            .build();
        let source = Source::Kernel(Kernel {
            debug_syms: false,
            ..Kernel::default()
        });
        Self {
            symbolizer,
            source,
            cache: HashMap::new(),
        }
    }

    /// The function name of each address in `addrs` (no offset), in order,
    /// or `0x<hex>` for an address that cannot be resolved.
    ///
    /// Addresses seen before come from the cache; all the others are
    /// resolved in one blazesym call. If blazesym fails as a whole (kallsyms
    /// unreadable, say), those addresses get the placeholder and are not
    /// cached, so a later call tries them again.
    pub fn symbolize(&mut self, addrs: &[u64]) -> Vec<String> {
        let mut missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !self.cache.contains_key(a))
            .collect();
        missing.sort_unstable();
        missing.dedup();

        if !missing.is_empty() {
            if let Ok(syms) = self
                .symbolizer
                .symbolize(&self.source, Input::AbsAddr(&missing))
            {
                for (&addr, sym) in missing.iter().zip(syms) {
                    let name = match sym {
                        Symbolized::Sym(sym) => sym.name.into_owned(),
                        Symbolized::Unknown(_) => placeholder(addr),
                    };
                    self.cache.insert(addr, name);
                }
            }
        }

        addrs
            .iter()
            .map(|a| {
                self.cache
                    .get(a)
                    .cloned()
                    .unwrap_or_else(|| placeholder(*a))
            })
            .collect()
    }

    /// The function name of one address, or `0x<hex>`; see
    /// [`symbolize`](Self::symbolize).
    pub fn symbolize_one(&mut self, addr: u64) -> String {
        self.symbolize(&[addr])
            .pop()
            .unwrap_or_else(|| placeholder(addr))
    }
}

/// The name given to an address that cannot be resolved.
fn placeholder(addr: u64) -> String {
    format!("{addr:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_schedule() {
        let Some(&addr) = kallsyms().get("schedule") else {
            println!("skipped: /proc/kallsyms shows no address for schedule (not root?)");
            return;
        };
        let mut ks = KernelSymbolizer::new();
        let names = ks.symbolize(&[addr, addr + 1, 1]);
        assert_eq!(names[0], "schedule");
        assert_eq!(names[1], "schedule");
        assert_eq!(names[2], "0x1");
        // Served from the cache the second time.
        assert!(ks.cache.contains_key(&addr));
        assert_eq!(ks.symbolize_one(addr), "schedule");
    }

    #[test]
    fn placeholder_is_hex() {
        assert_eq!(placeholder(0xffff_ffff_8100_0000), "0xffffffff81000000");
    }
}
