//! The processes of a recording, kept current from the procs object's
//! events (fork, exec, exit) and the layout announcements.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use libbpf_rs::{Link, MapCore, MapFlags};

use crate::bpf::load::put_layout;
use crate::bpf::maps::comm_str;
use crate::bpf::procs;
use crate::target::layout::{self, Layout};
use crate::target::{self, derive, Lookup};
use crate::views::Process;

/// How long a process whose frames are walked without pyusdt (or cannot
/// be) goes before it is looked at again for pyusdt.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// A process of the recording, as the procs object and /proc tell of it.
#[derive(Debug)]
pub struct Followed {
    pub ppid: u32,
    pub command: Vec<String>,
    /// Its layout, None until a program it exec'd announces one.
    pub layout: Option<Layout>,
    /// It exec'd a program that may load pyusdt: ask it for its layout.
    awaiting: bool,
    /// Its layout cannot be found without pyusdt (said once).
    underivable: bool,
    /// The link that asks it.
    pub asking: Option<Link>,
    /// The link that hears its threads' Python names, once tried (None
    /// after the try where its extension has no such probe).
    pub naming: Option<Option<Link>>,
    pub alive: bool,
    /// Programs it has exec'd: what a view attached to the one before is
    /// of no use in the next.
    generation: u32,
    /// When its memory map was last read to see whether it loaded pyusdt,
    /// once it has a layout found without it or none can be found.
    looked: Option<Instant>,
}

impl Followed {
    /// A process entered now, of its first program.
    fn new(ppid: u32, command: Vec<String>, layout: Option<Layout>, awaiting: bool) -> Self {
        Followed {
            ppid,
            command,
            layout,
            awaiting,
            underivable: false,
            asking: None,
            naming: None,
            alive: true,
            generation: 0,
            looked: None,
        }
    }
}

/// Processes and their layouts, kept current from the procs object's
/// events and the layout announcements.
#[derive(Debug)]
pub struct Tracker {
    pub procs: BTreeMap<u32, Followed>,
    /// Problems met once, to say once each.
    said: BTreeSet<String>,
}

impl Tracker {
    /// A recording of process `pid`, with its layout: `announced` by
    /// pyusdt, or else found without it (None for a root that is not Python
    /// yet, a shell); one that runs no pyusdt is asked in case it loads
    /// pyusdt later, whose announcement then takes over.
    pub fn new(pid: u32, command: Vec<String>, l: Option<Layout>, announced: bool) -> Self {
        let first = Followed::new(0, command, l, !announced);
        Tracker {
            procs: BTreeMap::from([(pid, first)]),
            said: BTreeSet::new(),
        }
    }

    fn say_once(&mut self, what: String) {
        if self.said.insert(what.clone()) {
            eprintln!("\r\x1b[Kpyusdt-prof: {what}");
        }
    }

    pub fn on_event(&mut self, e: &procs::types::follow_event) {
        use procs::types::follow_event_kind as Kind;
        let comm = || vec![comm_str(&e.comm)];
        match Kind(e.kind) {
            Kind::PROC_FORK => {
                let parent = self.procs.get(&e.ppid);
                let layout = parent.and_then(|p| p.layout);
                let command = target::command_line(e.pid)
                    .or_else(|| parent.map(|p| p.command.clone()))
                    .unwrap_or_else(comm);
                self.procs
                    .insert(e.pid, Followed::new(e.ppid, command, layout, false));
            }
            Kind::PROC_EXEC => {
                if let Some(p) = self.procs.get_mut(&e.pid) {
                    p.layout = None;
                    p.awaiting = true;
                    p.underivable = false;
                    p.asking = None;
                    p.naming = None;
                    p.generation += 1;
                    p.command = target::command_line(e.pid).unwrap_or_else(comm);
                }
            }
            Kind::PROC_EXIT => {
                if let Some(p) = self.procs.get_mut(&e.pid) {
                    p.alive = false;
                    p.awaiting = false;
                    p.asking = None;
                }
            }
            _ => {}
        }
    }

    /// Follows the processes that `pid` started before the recording began
    /// (a shell's running children): entered in the process table, and
    /// asked for their layouts.
    pub fn adopt(&mut self, pid: u32, targets: &impl MapCore) {
        for (child, ppid) in target::descendants(pid) {
            if self.procs.contains_key(&child)
                || targets
                    .update(
                        &child.to_ne_bytes(),
                        &ppid.to_ne_bytes(),
                        MapFlags::NO_EXIST,
                    )
                    .is_err()
            {
                continue;
            }
            let command = target::command_line(child).unwrap_or_default();
            self.procs
                .insert(child, Followed::new(ppid, command, None, true));
        }
    }

    /// Takes a layout announcement: the process's frames can be walked
    /// from now on.
    pub fn on_layout(&mut self, e: &layout::Event, layouts: &impl MapCore) {
        let Some(p) = self.procs.get_mut(&e.pid) else {
            return;
        };
        p.awaiting = false;
        let put = layout::accept(e).and_then(|l| put_layout(layouts, e.pid, &l).map(|()| l));
        // The link goes once the layout is in place: a process that waits
        // to be followed (PYUSDT_FOLLOWED_BY) starts when its semaphore
        // falls, which happens early in the link's detach (tens of ms).
        p.asking = None;
        // One whose layout was found without pyusdt before pyusdt loaded
        // listens to its thread names now.
        if matches!(p.naming, Some(None)) {
            p.naming = None;
        }
        match put {
            Ok(l) => p.layout = Some(l),
            Err(err) => self.say_once(format!("{err:#}; its Python frames are not recorded")),
        }
    }

    /// Asks each process that exec'd a program with pyusdt for its layout,
    /// and finds that of one that runs Python without pyusdt (see
    /// [`derive`]) once its interpreter has started; stops asking one that
    /// runs a program that is not Python.
    pub fn ask(&mut self, skel: &crate::bpf::layout::LayoutSkel<'_>, layouts: &impl MapCore) {
        let mut problems = Vec::new();
        for (&pid, p) in &mut self.procs {
            if !p.alive || !p.awaiting || p.asking.is_some() {
                continue;
            }
            // A process whose frames are walked already is looked at
            // again once a second, not at every tick: reading the memory
            // map of a process of 1,000 threads at every tick cost the
            // recorder 3% of a core.
            let settled = p.layout.is_some() || p.underivable;
            if settled && p.looked.is_some_and(|t| t.elapsed() < LOOK_AGAIN) {
                continue;
            }
            p.looked = settled.then(Instant::now);
            match target::lookup(pid) {
                Ok(Lookup::Ready(t)) => match layout::attach(skel, &t) {
                    Ok(link) => p.asking = Some(link),
                    Err(e) => {
                        p.awaiting = false;
                        problems.push(format!("process {pid}: {e:#}"));
                    }
                },
                Ok(Lookup::NotPython(_)) => p.awaiting = false,
                Ok(Lookup::Gone) => p.alive = false,
                // Python that may import pyusdt later: ask again; walk its
                // frames meanwhile.
                Ok(Lookup::WithoutPyusdt(_)) if p.layout.is_none() && !p.underivable => {
                    match derive::derive(pid).and_then(|l| {
                        l.map(|l| put_layout(layouts, pid, &l).map(|()| l))
                            .transpose()
                    }) {
                        Ok(l) => p.layout = l,
                        Err(e) => {
                            p.underivable = true;
                            problems.push(format!(
                                "process {pid}: {e:#}; its Python frames are not recorded"
                            ));
                        }
                    }
                }
                Ok(Lookup::WithoutPyusdt(_)) | Err(_) => {}
            }
        }
        for what in problems {
            self.say_once(what);
        }
    }

    /// Listens to the Python thread names of each live process with a
    /// layout, once per program it runs.
    pub fn listen_to_names(&mut self, skel: &crate::bpf::layout::LayoutSkel<'_>) {
        for (&pid, p) in &mut self.procs {
            if !p.alive || p.layout.is_none() || p.naming.is_some() {
                continue;
            }
            p.naming = Some(match target::lookup(pid) {
                Ok(Lookup::Ready(t)) => layout::listen_to_thread_names(skel, &t).ok(),
                _ => None,
            });
        }
    }

    /// Whether a process may be about to start a Python without pyusdt,
    /// whose layout [`ask`](Self::ask) finds once its interpreter runs.
    pub fn deriving(&self) -> bool {
        self.procs.values().any(|p| {
            p.alive && p.awaiting && p.layout.is_none() && !p.underivable && p.asking.is_none()
        })
    }

    /// The live processes that run Python with a layout, as the views
    /// that attach per process see them.
    pub fn python(&self) -> Vec<Process> {
        self.procs
            .iter()
            .filter(|(_, p)| p.alive && p.layout.is_some())
            .map(|(&pid, p)| Process {
                pid,
                generation: p.generation,
            })
            .collect()
    }

    pub fn live(&self) -> usize {
        self.procs.values().filter(|p| p.alive).count()
    }
}
