//! Live events: `pyusdt_prof.trace()`.

use pyo3::prelude::*;

/// Adds the trace API to the module.
pub(crate) fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
