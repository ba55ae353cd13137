//! The `pyusdt` provider: every probe the extension carries and its
//! arguments, strings as `const char *` (UTF-8, NUL-terminated) and
//! integers as signed 64-bit. The per-call ones keep the seed's names and
//! argument order.
//!
//! | probe | arguments |
//! | --- | --- |
//! | `PY_START`, `PY_RESUME` | function, file, firstlineno, offset |
//! | `PY_RETURN` | function, file, firstlineno, offset, repr(retval) |
//! | `PY_YIELD` | function, file, firstlineno, offset, repr(yieldval) |
//! | `CALL` | function, file, firstlineno, offset, repr(callable) |
//! | `LINE` | function, file, line |
//! | `PY_UNWIND`, `PY_THROW` | function, file, firstlineno, offset, repr(exception) |
//! | `layout` | address, size of the [`crate::layout::PyusdtLayout`] |
//! | `calls` | address of the thread's [`crate::calls::CallRing`], events written, first event for a new tracer |
//! | `span_begin`, `span_end` | name, id |
//! | `thread` | kernel thread id (`Thread.native_id`), `Thread.name` |

use crate::args::ArgType::{self, Int, Str};

/// The provider of the extension's own probes.
pub const PROVIDER: &str = "pyusdt";

/// The name of the extension's poll thread, which turns `sys.monitoring`
/// on while a per-call probe is attached: instrumentation, which profiles
/// and traces leave out.
pub const POLL_THREAD: &str = "pyusdt-poll";

/// The per-call probes, in the bit order of the extension's probe mask:
/// each is fed by the `sys.monitoring` event of the same name, so they
/// fire only on Python 3.12 and later.
pub const PER_CALL: [&str; 8] = [
    "PY_START",
    "PY_RESUME",
    "PY_RETURN",
    "PY_YIELD",
    "CALL",
    "LINE",
    "PY_UNWIND",
    "PY_THROW",
];

const ENTRY: &[ArgType] = &[Str, Str, Int, Int];
const WITH_VALUE: &[ArgType] = &[Str, Str, Int, Int, Str];

/// Every probe of the provider and its arguments' types.
pub const PROBES: &[(&str, &[ArgType])] = &[
    ("PY_START", ENTRY),
    ("PY_RESUME", ENTRY),
    ("PY_RETURN", WITH_VALUE),
    ("PY_YIELD", WITH_VALUE),
    ("CALL", WITH_VALUE),
    ("LINE", &[Str, Str, Int]),
    ("PY_UNWIND", WITH_VALUE),
    ("PY_THROW", WITH_VALUE),
    ("layout", &[Int, Int]),
    ("calls", &[Int, Int, Int]),
    ("span_begin", &[Str, Int]),
    ("span_end", &[Str, Int]),
    ("thread", &[Int, Str]),
];

/// The argument types of probe `provider:name`, if it is one of the
/// extension's.
pub fn arg_types(provider: &str, name: &str) -> Option<&'static [ArgType]> {
    if provider != PROVIDER {
        return None;
    }
    PROBES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_per_call_probe_is_in_the_table() {
        for name in PER_CALL {
            assert!(arg_types(PROVIDER, name).is_some(), "{name}");
        }
        assert_eq!(arg_types(PROVIDER, "LINE"), Some(&[Str, Str, Int][..]));
        assert_eq!(arg_types("other", "PY_START"), None);
    }
}
