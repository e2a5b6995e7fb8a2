//! What the stream is doing now: running work eagerly, capturing a graph or only recording what
//! a `graph_run` unit would enqueue (to check that a stored graph still matches it).
//!
//! Every operation that touches the stream takes the [`ExecState`] lock for the whole enqueue, so
//! a capture started by one thread can never swallow work of another: while a unit runs, only the
//! thread that started it may enqueue (others get an error), and frees of buffers dropped in the
//! meantime are deferred until the unit ends.

use super::error::err;
use crate::backend::kernels::KernelId;
use crate::error::BackendErrorKind;
use crate::Result;
use std::thread::{self, ThreadId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Work runs as it is enqueued; any thread may enqueue.
    Eager,
    /// The first run of a graph unit: eager, but host operations are counted (a unit with host
    /// operations cannot become a graph).
    Track,
    /// The stream is capturing a graph: work is recorded by the driver, nothing runs; host
    /// operations fail (they would invalidate the capture or be lost from the graph).
    Capture,
    /// A replay check: nothing is enqueued, the unit's operations are only recorded into the
    /// signature that is compared with the stored graph's.
    Record,
}

/// A tag and the words that identify one enqueued operation in a unit's signature.
pub(crate) enum Op<'a> {
    Kernel { func: u64, grid: [u32; 3], block: [u32; 3], smem: u32, params: &'a [u8] },
    Gemm { key: [u64; 7], ptrs: [u64; 4] },
    Copy { dst: u64, src: u64, bytes: u64 },
}

pub(crate) struct ExecState {
    pub mode: Mode,
    /// The thread running the current unit (mode ≠ Eager).
    pub owner: Option<ThreadId>,
    /// Signature of the operations enqueued by the current unit (Capture and Record modes).
    pub sig: Vec<u8>,
    /// Host operations of the current unit, and the first one's description.
    pub host_ops: usize,
    pub first_host_op: Option<String>,
    /// Device addresses whose free waits for the end of the current unit.
    pub deferred_frees: Vec<u64>,
    /// The last kernel launched, for error messages.
    pub last_kernel: Option<KernelId>,
}

/// What a unit did, handed back when it ends.
pub(crate) struct UnitReport {
    pub sig: Vec<u8>,
    pub host_ops: usize,
    pub first_host_op: Option<String>,
}

impl ExecState {
    pub fn new() -> Self {
        ExecState {
            mode: Mode::Eager,
            owner: None,
            sig: Vec::new(),
            host_ops: 0,
            first_host_op: None,
            deferred_frees: Vec::new(),
            last_kernel: None,
        }
    }

    /// Fails when a unit started by another thread is running.
    pub fn check_thread(&self, what: &str) -> Result<()> {
        if self.mode != Mode::Eager && self.owner != Some(thread::current().id()) {
            return Err(err(
                BackendErrorKind::InvalidUse,
                format!(
                    "{what}: called from another thread while a graph_run unit is running on {:?}; \
                 the CUDA backend's stream must be driven by one thread during graph_run",
                    self.owner
                ),
            ));
        }
        Ok(())
    }

    /// Starts a unit in `mode` on the calling thread.
    pub fn begin(&mut self, mode: Mode) -> Result<()> {
        if self.mode != Mode::Eager {
            return Err(err(
                BackendErrorKind::InvalidUse,
                format!("graph_run: another unit is already running ({:?} on {:?})", self.mode, self.owner),
            ));
        }
        self.mode = mode;
        self.owner = Some(thread::current().id());
        self.sig.clear();
        self.host_ops = 0;
        self.first_host_op = None;
        Ok(())
    }

    /// Ends the unit: back to eager mode. The caller frees `deferred_frees` afterwards.
    pub fn end(&mut self) -> UnitReport {
        self.mode = Mode::Eager;
        self.owner = None;
        UnitReport {
            sig: std::mem::take(&mut self.sig),
            host_ops: self.host_ops,
            first_host_op: self.first_host_op.take(),
        }
    }

    fn note_host_op(&mut self, what: &str) {
        self.host_ops += 1;
        if self.first_host_op.is_none() {
            self.first_host_op = Some(what.to_string());
        }
    }

    /// A host operation (allocation, upload, download, write, synchronize): allowed eagerly
    /// (counted in a tracked unit), an error while capturing or recording.
    pub fn host_op(&mut self, what: &str) -> Result<()> {
        self.check_thread(what)?;
        match self.mode {
            Mode::Eager => Ok(()),
            Mode::Track => {
                self.note_host_op(what);
                Ok(())
            }
            Mode::Capture | Mode::Record => {
                self.note_host_op(what);
                Err(err(
                    BackendErrorKind::InvalidUse,
                    format!(
                        "{what} inside a graph_run unit: host operations cannot be captured in a CUDA graph \
                     (the unit runs eagerly instead)"
                    ),
                ))
            }
        }
    }

    /// A buffer is being freed; returns true when the free must wait for the end of the unit.
    pub fn free_must_wait(&mut self, ptr: u64) -> bool {
        let own_thread = self.owner == Some(thread::current().id());
        match self.mode {
            Mode::Eager => false,
            // An eager unit frees at once (stream-ordered), but a graph of it would not.
            Mode::Track if own_thread => {
                self.note_host_op("free of a device buffer");
                false
            }
            _ => {
                self.note_host_op("free of a device buffer");
                self.deferred_frees.push(ptr);
                true
            }
        }
    }

    /// Records `op` into the signature when capturing or recording; returns whether the work
    /// must actually be enqueued (false in Record mode).
    pub fn enqueue(&mut self, what: &str, op: Op<'_>) -> Result<bool> {
        self.check_thread(what)?;
        if matches!(self.mode, Mode::Capture | Mode::Record) {
            let s = &mut self.sig;
            match op {
                Op::Kernel { func, grid, block, smem, params } => {
                    s.push(1);
                    s.extend_from_slice(&func.to_le_bytes());
                    for v in grid.iter().chain(&block).chain(std::iter::once(&smem)) {
                        s.extend_from_slice(&v.to_le_bytes());
                    }
                    s.extend_from_slice(&(params.len() as u32).to_le_bytes());
                    s.extend_from_slice(params);
                }
                Op::Gemm { key, ptrs } => {
                    s.push(2);
                    for v in key.iter().chain(&ptrs) {
                        s.extend_from_slice(&v.to_le_bytes());
                    }
                }
                Op::Copy { dst, src, bytes } => {
                    s.push(3);
                    for v in [dst, src, bytes] {
                        s.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        Ok(self.mode != Mode::Record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn kernel(params: &[u8]) -> Op<'_> {
        Op::Kernel { func: 0x1000, grid: [1, 2, 3], block: [128, 1, 1], smem: 0, params }
    }

    #[test]
    fn eager_runs_and_records_nothing() {
        let mut st = ExecState::new();
        assert!(st.enqueue("k", kernel(&[1, 2])).unwrap());
        assert!(st.sig.is_empty());
        st.host_op("download").unwrap();
        assert!(!st.free_must_wait(0x10));
        assert_eq!(st.host_ops, 0);
    }

    #[test]
    fn record_mode_builds_comparable_signatures() {
        let mut st = ExecState::new();
        let mut sigs = Vec::new();
        for params in [[1u8, 2], [1, 2], [1, 3]] {
            st.begin(Mode::Record).unwrap();
            assert!(!st.enqueue("k", kernel(&params)).unwrap(), "record mode enqueues nothing");
            assert!(!st.enqueue("c", Op::Copy { dst: 1, src: 2, bytes: 3 }).unwrap());
            assert!(!st.enqueue("g", Op::Gemm { key: [1, 2, 3, 4, 5, 6, 7], ptrs: [7, 8, 0, 9] }).unwrap());
            sigs.push(st.end().sig);
        }
        assert_eq!(sigs[0], sigs[1]);
        assert_ne!(sigs[0], sigs[2], "parameter bytes are part of the signature");
        assert_eq!(st.mode, Mode::Eager);
    }

    #[test]
    fn host_operations_are_counted_or_refused() {
        let mut st = ExecState::new();
        st.begin(Mode::Track).unwrap();
        st.host_op("allocation").unwrap();
        assert!(!st.free_must_wait(0x20), "a tracked (eager) unit frees at once");
        let r = st.end();
        assert_eq!((r.host_ops, r.first_host_op.as_deref()), (2, Some("allocation")));

        for mode in [Mode::Capture, Mode::Record] {
            st.begin(mode).unwrap();
            assert!(st.host_op("download").is_err());
            assert!(st.free_must_wait(0x30), "frees wait for the end of a capture");
            assert!(st.enqueue("k", kernel(&[])).unwrap() == (mode == Mode::Capture));
            let r = st.end();
            assert_eq!(r.host_ops, 2);
            assert_eq!(std::mem::take(&mut st.deferred_frees), vec![0x30]);
        }
    }

    #[test]
    fn one_unit_at_a_time_and_one_thread() {
        let st = Arc::new(Mutex::new(ExecState::new()));
        st.lock().unwrap().begin(Mode::Capture).unwrap();
        assert!(st.lock().unwrap().begin(Mode::Track).is_err());
        let other = Arc::clone(&st);
        std::thread::spawn(move || {
            let mut s = other.lock().unwrap();
            assert!(s.enqueue("k", kernel(&[])).is_err(), "another thread may not enqueue during a capture");
            assert!(s.host_op("download").is_err());
            assert!(s.free_must_wait(0x40), "a drop on another thread defers its free");
        })
        .join()
        .unwrap();
        let mut s = st.lock().unwrap();
        assert!(s.enqueue("k", kernel(&[])).unwrap());
        let r = s.end();
        assert_eq!(r.host_ops, 1);
        assert_eq!(s.deferred_frees, vec![0x40]);
    }
}
