//! Counts of threads that have exited, moved out of the maps while
//! recording. A view's count map holds one key per thread and stack; a
//! program that starts a thread per request (`ThreadingHTTPServer`) makes
//! new keys as long as it runs, and once the map is full what follows is
//! lost. An exited thread adds nothing more to its counts, so they are
//! read, deleted from the map and kept in the recorder's memory, merged
//! by key (a thread id used again makes the same keys): exact, and the
//! map holds only the keys of the threads alive and of those that exited
//! in the last second or so.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags};

use crate::bpf::maps::{decode, hash_entries, hash_scan};
use crate::Result;

/// A count kept per key, which adds up when two entries of one key merge.
pub trait Count: plain::Plain + Default + Copy {
    fn add(&mut self, other: &Self);
}

impl Count for u64 {
    fn add(&mut self, other: &Self) {
        *self = self.saturating_add(*other);
    }
}

impl Count for crate::bpf::procs::types::time_hist {
    fn add(&mut self, other: &Self) {
        self.ns = self.ns.saturating_add(other.ns);
        self.count = self.count.saturating_add(other.count);
        add_slots(&mut self.hist, &other.hist);
    }
}

/// Adds histogram `b` to `a`, slot by slot.
pub fn add_slots(a: &mut [u32], b: &[u32]) {
    for (a, b) in a.iter_mut().zip(b) {
        *a = a.saturating_add(*b);
    }
}

/// A key that begins with the thread it counts for.
pub trait ThreadKey: plain::Plain + Default + Copy {
    /// (tgid, tid).
    fn thread(&self) -> (u32, u32);
}

/// Implements [`ThreadKey`] for key types whose first fields are `tgid`
/// and `tid`.
macro_rules! thread_keys {
    ($($t:ty),* $(,)?) => {
        $(impl $crate::bpf::retire::ThreadKey for $t {
            fn thread(&self) -> (u32, u32) {
                (self.tgid, self.tid)
            }
        })*
    };
}
pub(crate) use thread_keys;

/// Entries moved out of a hash map, merged by key.
pub struct Moved<K, V> {
    entries: HashMap<Vec<u8>, (K, V)>,
}

impl<K, V> Default for Moved<K, V> {
    fn default() -> Self {
        Moved {
            entries: HashMap::new(),
        }
    }
}

impl<K, V> std::fmt::Debug for Moved<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moved")
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// Keys deleted from a map per call.
const MOVE_BATCH: usize = 1024;

impl<K: plain::Plain + Default + Copy, V: Count> Moved<K, V> {
    /// Moves entries `out` (as read from `map`, whose programs no longer
    /// write them, and from which nothing else deletes) out of `map`:
    /// each one is kept once it is out of the map, so that none is
    /// counted twice nor dropped.
    pub fn take(&mut self, map: &dyn MapCore, out: &[(K, V)]) {
        let keys: Vec<K> = out.iter().map(|(k, _)| *k).collect();
        for ((k, v), gone) in out.iter().zip(delete_keys(map, &keys)) {
            if gone {
                self.add(k, v);
            }
        }
    }

    /// Adds `v` at `k`.
    pub fn add(&mut self, k: &K, v: &V) {
        self.entries
            .entry(key_bytes(k))
            .and_modify(|(_, have)| have.add(v))
            .or_insert((*k, *v));
    }

    /// The entries moved.
    pub fn iter(&self) -> impl Iterator<Item = &(K, V)> {
        self.entries.values()
    }

    /// The entries of `map` now and those moved out of it.
    pub fn with(&self, map: &dyn MapCore) -> Result<Vec<(K, V)>> {
        let mut out = hash_entries::<K, V>(map)?;
        out.extend(self.iter().copied());
        Ok(out)
    }
}

/// Deletes `keys` from `map`, a batch at a time; says of each key whether
/// it is out of the map now (deleted, by its batch or alone).
pub fn delete_keys<K: plain::Plain>(map: &dyn MapCore, keys: &[K]) -> Vec<bool> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(MOVE_BATCH) {
        let bytes: Vec<u8> = chunk.iter().flat_map(key_bytes).collect();
        let deleted = map
            .delete_batch(&bytes, chunk.len() as u32, MapFlags::ANY, MapFlags::ANY)
            .is_ok();
        // A batch that failed part-way deleted some: each key alone, where
        // one already gone is one the batch deleted.
        out.extend(chunk.iter().map(|k| {
            deleted
                || match map.delete(&key_bytes(k)) {
                    Ok(()) => true,
                    Err(e) => e.kind() == libbpf_rs::ErrorKind::NotFound,
                }
        }));
    }
    out
}

fn key_bytes<K: plain::Plain>(k: &K) -> Vec<u8> {
    // SAFETY: the map key types are plain C data without padding.
    unsafe { plain::as_bytes(k) }.to_vec()
}

/// The threads alive now, read from `/proc` once per process, as asked.
#[derive(Debug, Default)]
pub struct LiveThreads {
    by_process: HashMap<u32, HashSet<u32>>,
}

impl LiveThreads {
    /// Whether thread `tid` of process `tgid` is alive.
    pub fn alive(&mut self, tgid: u32, tid: u32) -> bool {
        self.by_process
            .entry(tgid)
            .or_insert_with(|| crate::target::tasks(tgid).into_iter().collect())
            .contains(&tid)
    }
}

/// The shortest and the longest time between two passes over a map.
const PASS_MIN: Duration = Duration::from_millis(500);
const PASS_MAX: Duration = Duration::from_secs(4);
/// A pass is due when about this share of the map's keys may have become
/// exited threads' since the last one.
const PASS_SHARE: u32 = 8;

/// A count map whose exited threads' entries are moved out as they exit.
/// A pass reads the map; an entry is moved at the first pass that finds
/// its thread gone after a pass that found it gone already: a thread's
/// last events (a sample, a return to the CPU counted at its last
/// departure) come after `/proc` stops listing it, within microseconds.
/// A pass reads the whole map (its every bucket), so passes are as far
/// apart as the rate at which threads' keys turn to exited threads' lets
/// them be: an eighth of the map between two passes, at the rate the last
/// pass saw, and 0.5 s to 4 s apart. Entries of exited threads then fill
/// at most about a quarter of the map.
#[derive(Debug)]
pub struct Retired<K, V> {
    moved: Moved<K, V>,
    /// Threads found gone, with entries in the map, at the last pass.
    gone: HashSet<(u32, u32)>,
    /// When the last pass was, and when the next one is due.
    last: Instant,
    next: Instant,
}

impl<K, V> Default for Retired<K, V> {
    fn default() -> Self {
        let now = Instant::now();
        Retired {
            moved: Moved::default(),
            gone: HashSet::new(),
            last: now,
            next: now + PASS_MIN,
        }
    }
}

impl<K: ThreadKey, V: Count> Retired<K, V> {
    /// One tick of the recording: a pass over `map` if one is due. A map
    /// that cannot be read keeps its entries: it may fill, and what does
    /// not fit is counted as lost.
    pub fn tick(&mut self, map: &dyn MapCore, threads: &mut LiveThreads) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        let mut gone = HashSet::new();
        let mut out = Vec::new();
        // Entries of threads found gone since the last pass.
        let mut newly = 0u32;
        // Only the entries to move are decoded whole.
        let scanned = hash_scan(map, |kb, vb| {
            let mut k = K::default();
            plain::copy_from_bytes(&mut k, kb).map_err(|_| anyhow::anyhow!("a short map key"))?;
            let (tgid, tid) = k.thread();
            if threads.alive(tgid, tid) {
                return Ok(());
            }
            if self.gone.contains(&(tgid, tid)) {
                out.push(decode::<K, V>(kb, vb)?);
            } else {
                newly += 1;
            }
            gone.insert((tgid, tid));
            Ok(())
        });
        if scanned.is_err() {
            self.next = now + PASS_MAX;
            return;
        }
        self.moved.take(map, &out);
        self.gone = gone;
        let since = now.duration_since(self.last).as_secs_f64();
        let room = f64::from(map.max_entries() / PASS_SHARE);
        let wait = if newly == 0 {
            PASS_MAX
        } else {
            Duration::from_secs_f64(room * since / f64::from(newly))
        };
        self.last = now;
        self.next = now + wait.clamp(PASS_MIN, PASS_MAX);
    }

    /// The entries of `map` now and those moved out of it.
    pub fn entries(&self, map: &dyn MapCore) -> Result<Vec<(K, V)>> {
        self.moved.with(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_one_key_add_up() {
        let mut m: Moved<u64, u64> = Moved::default();
        m.add(&7, &2);
        m.add(&7, &3);
        m.add(&8, &1);
        let mut all: Vec<(u64, u64)> = m.iter().copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![(7, 5), (8, 1)]);
    }

    #[test]
    fn this_thread_is_alive_and_a_made_up_one_is_not() {
        let mut t = LiveThreads::default();
        let pid = std::process::id();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(t.alive(pid, tid));
        assert!(t.alive(pid, pid));
        assert!(!t.alive(pid, u32::MAX));
        assert!(!t.alive(u32::MAX, 1));
    }
}
