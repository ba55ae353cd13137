//! Reading what the BPF programs count: their maps and their live
//! counters, and the clock they read.

use anyhow::Context;
use libbpf_rs::{MapCore, MapFlags};

use crate::bpf::procs;
use crate::Result;

/// Reads a counter that BPF updates in place.
pub fn live(v: &u64) -> u64 {
    // SAFETY: `v` points into the object's mmapped .bss, which BPF
    // programs update concurrently: read it as memory that may change.
    unsafe { std::ptr::read_volatile(v) }
}

/// CLOCK_MONOTONIC now, in ns: the clock BPF's `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A Python stack: (code address, instruction) per frame, root first, and
/// whether the walker cut it.
pub type PyStack = (Vec<(u64, u32)>, bool);

/// A Python stack by id from a `pystacks` map: code addresses root first,
/// and whether it was truncated. Every object's map holds the one C
/// `struct pystack` (bpf/pystack.h), so one skeleton's type decodes all.
pub fn python_stack(map: &impl MapCore, id: u64) -> Result<PyStack> {
    if id == 0 {
        return Ok((Vec::new(), false));
    }
    let Some(bytes) = map
        .lookup(&id.to_ne_bytes(), MapFlags::ANY)
        .context("read a Python stack")?
    else {
        return Ok((Vec::new(), false));
    };
    let mut s = procs::types::pystack::default();
    plain::copy_from_bytes(&mut s, &bytes)
        .map_err(|_| anyhow::anyhow!("a Python stack of {} bytes", bytes.len()))?;
    let n = (s.len as usize).min(s.frames.len());
    let mut frames: Vec<(u64, u32)> = s.frames[..n]
        .iter()
        .copied()
        .zip(s.lasti[..n].iter().copied())
        .collect();
    frames.reverse();
    Ok((frames, s.truncated != 0))
}

/// A kernel stack by id from a stack-trace map, root first.
pub fn kernel_stack(map: &impl MapCore, id: i32) -> Result<Vec<u64>> {
    if id < 0 {
        return Ok(Vec::new());
    }
    kernel_stack_at(map, &id.to_ne_bytes())
}

/// The kernel stack at `key` of `map` (instruction pointers, leaf first,
/// 0 after the last), root first; empty if there is none.
pub fn kernel_stack_at(map: &impl MapCore, key: &[u8]) -> Result<Vec<u64>> {
    let Some(bytes) = map
        .lookup(key, MapFlags::ANY)
        .context("read a kernel stack")?
    else {
        return Ok(Vec::new());
    };
    let mut ips: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
        .take_while(|&ip| ip != 0)
        .collect();
    ips.reverse();
    Ok(ips)
}

/// Every (key, value) of a hash map, decoded.
pub fn entries<K: plain::Plain + Default, V: plain::Plain + Default>(
    map: &(impl MapCore + ?Sized),
) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for kb in map.keys() {
        let Some(vb) = map.lookup(&kb, MapFlags::ANY).context("read a count")? else {
            continue;
        };
        out.push(decode(&kb, &vb)?);
    }
    Ok(out)
}

/// A map entry's key and value bytes, decoded.
pub fn decode<K: plain::Plain + Default, V: plain::Plain + Default>(
    kb: &[u8],
    vb: &[u8],
) -> Result<(K, V)> {
    let (mut k, mut v) = (K::default(), V::default());
    plain::copy_from_bytes(&mut k, kb).map_err(|_| anyhow::anyhow!("a short map key"))?;
    plain::copy_from_bytes(&mut v, vb).map_err(|_| anyhow::anyhow!("a short map value"))?;
    Ok((k, v))
}

/// Every entry of hash map `map`, read 1,024 at a time (one syscall each,
/// where [`entries`] makes two per entry). libbpf-rs's batch iterator is
/// not used: it stops at the first batch shorter than asked, and a hash
/// map's batches end at a bucket's end, short long before the last.
pub fn hash_entries<K: plain::Plain + Default, V: plain::Plain + Default>(
    map: &(impl MapCore + ?Sized),
) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    hash_scan(map, |k, v| {
        out.push(decode(k, v)?);
        Ok(())
    })?;
    Ok(out)
}

/// Calls `each` with the key and value bytes of every entry of hash map
/// `map`, read as [`hash_entries`] reads them.
pub fn hash_scan(
    map: &(impl MapCore + ?Sized),
    mut each: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    const COUNT: u32 = 1024;
    let (ks, vs) = (map.key_size() as usize, map.value_size() as usize);
    let mut keys = vec![0u8; ks * COUNT as usize];
    let mut values = vec![0u8; vs * COUNT as usize];
    // The position between batches: a bucket index for a hash map.
    let (mut at, mut next) = (0u64, 0u64);
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    for first in std::iter::once(true).chain(std::iter::repeat(false)) {
        let mut n = COUNT;
        // SAFETY: the buffers hold COUNT keys and values of the map's
        // sizes; `at` and `next` are 8 bytes, more than a hash map's
        // 4-byte position.
        let ret = unsafe {
            libbpf_sys::bpf_map_lookup_batch(
                map.as_fd().as_raw_fd(),
                if first {
                    std::ptr::null_mut()
                } else {
                    (&mut at as *mut u64).cast()
                },
                (&mut next as *mut u64).cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut n,
                &opts,
            )
        };
        let err = std::io::Error::last_os_error();
        for i in 0..(n as usize).min(COUNT as usize) {
            each(&keys[i * ks..(i + 1) * ks], &values[i * vs..(i + 1) * vs])?;
        }
        if ret < 0 {
            if err.raw_os_error() == Some(libc::ENOENT) {
                break; // the end of the map
            }
            return Err(err).context("read a map in batches");
        }
        at = next;
    }
    Ok(())
}

/// A histogram as the profile keeps it: without its trailing empty slots.
pub fn trimmed(hist: &[u32]) -> Vec<u64> {
    let used = hist.iter().rposition(|&n| n != 0).map_or(0, |i| i + 1);
    hist[..used].iter().map(|&n| u64::from(n)).collect()
}

/// A C string from a BPF map (a thread name), as text.
pub fn comm_str(c: &[i8]) -> String {
    let bytes: Vec<u8> = c
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The histogram (as `trimmed` gives it) of one duration of `ns`: a 1 in
/// its log2 slot, as `bpf/hist.bpf.h` puts it (the last slot holds all
/// longer).
pub fn histogram_of(ns: u64) -> Vec<u64> {
    const SLOTS: usize = 40; // HIST_SLOTS of bpf/pystack.h
    let slot = (ns.max(1).ilog2() as usize).min(SLOTS - 1);
    let mut h = vec![0; slot + 1];
    h[slot] = 1;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_duration_lands_in_its_log2_slot() {
        assert_eq!(histogram_of(0), vec![1]);
        assert_eq!(histogram_of(1), vec![1]);
        assert_eq!(histogram_of(25_000_000), {
            let mut h = vec![0; 25];
            h[24] = 1;
            h
        });
        assert_eq!(histogram_of(u64::MAX).len(), 40);
    }
}
