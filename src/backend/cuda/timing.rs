//! Device-side timing for benchmarks (benches/kernels.rs, benches/step.rs): CUDA events on the
//! backend's stream, a plain captured graph to launch many times without `graph_run`'s per-replay
//! signature check (whose host cost would hide the device time of microsecond kernels), and the
//! L2 size (inputs of a timed kernel rotate through more memory than that).
//!
//! ```text
//! let g = cuda.capture_graph(&mut || { for s in &sets { op(s)?; } Ok(()) })?;   // runs it once eagerly first
//! let t0 = cuda.record_event()?;
//! for _ in 0..n { unsafe { g.launch(&cuda)? } }
//! let ms = t0.elapsed_ms(&cuda.record_event()?)?;                              // waits for the end event
//! ```
//!
//! Nothing here is used by the model or the pipeline; events and bench graphs must be recorded
//! and launched outside `graph_run` units (they are errors inside one).

use super::error::{drv, err};
use super::exec::Mode;
use super::Cuda;
use crate::error::BackendErrorKind;
use crate::Result;
use cudarc::driver::{sys, CudaEvent, CudaGraph};

/// A timing event recorded on the backend's stream.
pub struct GpuEvent(CudaEvent);

impl GpuEvent {
    /// Milliseconds of device time from `self` to `end` (waits until `end` has completed).
    pub fn elapsed_ms(&self, end: &GpuEvent) -> Result<f64> {
        self.0.elapsed_ms(&end.0).map(f64::from).map_err(|e| drv(e, "reading the time between two CUDA events"))
    }
}

/// A graph captured by [`Cuda::capture_graph`].
pub struct BenchGraph {
    graph: CudaGraph,
    launches: usize,
}

impl BenchGraph {
    /// Kernel launches, GEMMs and copies the graph holds (what the captured closure enqueued).
    pub fn ops(&self) -> usize {
        self.launches
    }

    /// Enqueues one run of the graph on the backend's stream.
    ///
    /// # Safety
    /// The graph replays the device addresses the closure used when it was captured: every
    /// tensor it touched must still be alive (not dropped, so not freed) when the launch runs.
    pub unsafe fn launch(&self, cuda: &Cuda) -> Result<()> {
        let st = cuda.dev.exec();
        if st.mode != Mode::Eager {
            return Err(err(BackendErrorKind::InvalidUse, "launching a bench graph inside a graph_run unit"));
        }
        cuda.dev.bind()?;
        self.graph.launch().map_err(|e| drv(e, "launching a bench graph"))
    }
}

/// Ends a capture that the closure left by panicking, so the stream does not stay capturing.
struct CaptureGuard<'a> {
    cuda: &'a Cuda,
    active: bool,
}

impl Drop for CaptureGuard<'_> {
    fn drop(&mut self) {
        if self.active {
            let _ = self.cuda.dev.stream.end_capture(sys::CUgraphInstantiate_flags(0));
            self.cuda.dev.end_unit();
        }
    }
}

impl Cuda {
    /// Records a timing event on the stream after all work queued so far.
    pub fn record_event(&self) -> Result<GpuEvent> {
        let st = self.dev.exec();
        st.check_thread("record_event")?;
        if st.mode != Mode::Eager {
            return Err(err(BackendErrorKind::InvalidUse, "record_event inside a graph_run unit"));
        }
        self.dev.bind()?;
        let ev = self
            .dev
            .stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| drv(e, "recording a CUDA event"))?;
        Ok(GpuEvent(ev))
    }

    /// Device milliseconds that the work `f` enqueues takes (an event before and after it;
    /// waits for the end).
    pub fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let start = self.record_event()?;
        f()?;
        let end = self.record_event()?;
        start.elapsed_ms(&end)
    }

    /// Runs `f` once eagerly (loads its kernels, makes its cuBLASLt plans), then captures what it
    /// enqueues into a CUDA graph. `f` must only enqueue device work (no allocation, upload,
    /// download or synchronisation) and must not free buffers.
    pub fn capture_graph(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<BenchGraph> {
        f()?;
        self.dev.synchronize("capture_graph")?;
        let dev = &self.dev;
        dev.begin_capture()?;
        let mut guard = CaptureGuard { cuda: self, active: true };
        let r = f();
        let ended = dev.end_capture("the bench graph");
        guard.active = false;
        let rep = dev.end_unit();
        r?;
        if rep.host_ops > 0 {
            return Err(err(
                BackendErrorKind::InvalidUse,
                format!(
                    "capture_graph: the closure performs host operations ({})",
                    rep.first_host_op.unwrap_or_default()
                ),
            ));
        }
        let graph =
            ended?.ok_or_else(|| err(BackendErrorKind::InvalidUse, "capture_graph: the closure enqueued nothing"))?;
        let launches = count_ops(&rep.sig);
        Ok(BenchGraph { graph, launches })
    }

    /// The device's L2 cache size in bytes.
    pub fn l2_cache_bytes(&self) -> Result<usize> {
        use sys::CUdevice_attribute as A;
        self.dev
            .ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .map(|v| v.max(0) as usize)
            .map_err(|e| drv(e, "querying the L2 cache size"))
    }
}

/// Number of operations in a unit signature (see exec.rs: a tag byte, then fixed-size words).
fn count_ops(sig: &[u8]) -> usize {
    let mut i = 0;
    let mut n = 0;
    while i < sig.len() {
        n += 1;
        i += match sig[i] {
            // func u64, grid 3×u32, block 3×u32, smem u32, params len u32 + bytes
            1 => {
                let at = i + 1 + 8 + 7 * 4;
                let len = sig.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
                1 + 8 + 7 * 4 + 4 + len
            }
            2 => 1 + 11 * 8,
            3 => 1 + 3 * 8,
            _ => return n,
        };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::super::exec::{ExecState, Mode, Op};
    use super::count_ops;

    #[test]
    fn counts_the_operations_of_a_signature() {
        let mut st = ExecState::new();
        st.begin(Mode::Record).unwrap();
        assert_eq!(count_ops(&st.sig), 0);
        let params = [7u8; 136];
        st.enqueue("k", Op::Kernel { func: 1, grid: [2, 3, 4], block: [128, 1, 1], smem: 0, params: &params }).unwrap();
        st.enqueue("g", Op::Gemm { key: [1, 2, 3, 4, 5, 6, 7], ptrs: [7, 8, 0, 9] }).unwrap();
        st.enqueue("c", Op::Copy { dst: 1, src: 2, bytes: 3 }).unwrap();
        st.enqueue("k", Op::Kernel { func: 2, grid: [1, 1, 1], block: [32, 1, 1], smem: 64, params: &params[..24] })
            .unwrap();
        assert_eq!(count_ops(&st.end().sig), 4);
    }
}
