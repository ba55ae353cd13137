//! What the stack walker shares with the recorder besides stacks (the C
//! twins are in `bpf/pystack.h`, `bpf/cpu_counts.h` and `bpf/span.h`).

/// Frames kept per Python stack; a deeper stack keeps its leaf-most ones
/// (`PYSTACK_MAX_FRAMES`).
pub const MAX_FRAMES: usize = 256;

/// The kernel stack id of an event without one (`KSTACK_NONE`).
pub const KSTACK_NONE: i32 = -1;

/// Slots of a log2 time histogram (`HIST_SLOTS`): slot k counts the events
/// that lasted [2^k, 2^(k+1)) ns, the last one everything longer.
pub const HIST_SLOTS: usize = 40;

/// Why a walk found no stack, or dropped part of one: the index of its
/// counter in each object's `pystack_errors` (`enum pystack_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum WalkError {
    /// The process announced no layout.
    NoLayout = 0,
    /// No thread state for this thread: it runs no Python.
    NoThread = 1,
    /// A read of the target's memory failed.
    Read = 2,
    /// The stack map was full.
    StacksFull = 3,
    /// The code name map was full.
    NamesFull = 4,
    /// A kernel stack was lost (map full, or a hash collision).
    KernelStack = 5,
}

impl WalkError {
    /// Every one, by index.
    pub const ALL: [WalkError; 6] = [
        WalkError::NoLayout,
        WalkError::NoThread,
        WalkError::Read,
        WalkError::StacksFull,
        WalkError::NamesFull,
        WalkError::KernelStack,
    ];

    /// How a profile's `walk_errors` names it.
    pub const fn reason(self) -> &'static str {
        match self {
            WalkError::NoLayout => "no layout",
            WalkError::NoThread => "not a Python thread",
            WalkError::Read => "unreadable memory",
            WalkError::StacksFull => "Python stack map full",
            WalkError::NamesFull => "code name map full",
            WalkError::KernelStack => "kernel stack map full or colliding",
        }
    }
}

/// A CPU sample's flag (`CPU_F_GIL_WAIT`): the thread was inside the
/// interpreter's take_gil, waiting for the GIL.
pub const CPU_F_GIL_WAIT: u32 = 1;

/// Bytes of a span's name compared, its NUL included (`SPAN_NAME_LEN`).
pub const SPAN_NAME_LEN: usize = 64;
