//! The profile reader on arbitrary bytes: it returns a profile or an
//! error, and never panics; what it accepts, `fold` can fold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyusdt_prof::profile::{Profile, ViewKind};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Profile::parse(data) {
        for kind in ViewKind::ALL {
            if p.view(kind).is_some() {
                let _ = p.folded(kind, false, false);
                let _ = p.folded(kind, true, true);
            }
        }
    }
});
