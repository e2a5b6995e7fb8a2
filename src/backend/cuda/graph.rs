//! `graph_run`: CUDA graphs for the units of work the model enqueues every step.
//!
//! Per key, a unit goes through:
//!
//! ```text
//! 1st call  warm-up  runs eagerly (cuBLASLt heuristics, function loads, shared-memory
//!                    attributes happen here, outside any capture) while counting host
//!                    operations: a unit with any (allocation, upload, download, synchronize,
//!                    free) stays eager for good — a graph would not replay them
//! 2nd call  capture  stream capture (thread-local mode) of one run, instantiate, launch
//! later     replay   the unit runs in *record* mode — nothing is enqueued, each operation
//!                    (kernel + parameter bytes, GEMM + addresses, copy) is appended to a
//!                    signature — and the graph is launched only if the signature equals the
//!                    captured one; otherwise (new buffers, other sizes) the stale graph is
//!                    dropped and the unit runs eagerly as a new warm-up
//! ```
//!
//! The signature check makes a replay do exactly what an eager run would: same kernels, same
//! parameters (so the same device addresses), same GEMM plans. A capture that fails (an error
//! inside the unit, a host operation, a driver refusal) has executed nothing — during capture the
//! driver only records — and the unit then runs eagerly, with a one-time warning when the failure
//! was the capture's and not the unit's. `DELTADIT_CUDA_GRAPHS=0` disables all of this.

use super::error::drv;
use super::exec::Mode;
use super::Cuda;
use crate::Result;
use cudarc::driver::{sys, CudaGraph};
use std::collections::{HashMap, HashSet};

/// After this many stale replays in a row (no matching replay in between) a key stays eager:
/// its unit enqueues different work on every call. A unit that is stable within a sampling run
/// but uses new buffers in the next run goes stale once per run and keeps its graphs.
const MAX_STALE: u32 = 3;

/// Counters of graph_run, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// first runs of a key (eager, tracked)
    pub warmups: u64,
    /// graphs captured and instantiated
    pub captures: u64,
    /// graph launches after a matching record run
    pub replays: u64,
    /// eager runs of keys that stay eager (host operations, failed captures, graphs off)
    pub eager: u64,
    /// replays refused because the unit's signature changed
    pub stale: u64,
    /// captures that failed and fell back to eager execution
    pub failed_captures: u64,
}

/// A captured graph. `CudaGraph` holds raw handles and is not Send.
struct Graph(CudaGraph);

// SAFETY: CUDA graph objects may be used from any thread as long as calls on one graph are
// serialised (CUDA "Graph object thread safety"); a `Graph` is owned by one cache entry and only
// touched by the thread that took the entry out of the mutex-protected map.
unsafe impl Send for Graph {}

enum Entry {
    /// never capture (host operations, failed capture, too many stale replays)
    Eager,
    /// ran once (or went stale): capture on the next call
    Warm {
        stale: u32,
    },
    Captured {
        graph: Graph,
        sig: Vec<u8>,
        stale: u32,
    },
}

#[derive(Default)]
pub(crate) struct Graphs {
    entries: HashMap<String, Entry>,
    warned: HashSet<String>,
    pub stats: GraphStats,
}

impl Graphs {
    fn warn_once(&mut self, key: &str, msg: &str) {
        if self.warned.insert(key.to_string()) {
            eprintln!("deltadit cuda: graph_run `{key}`: {msg}; running it eagerly");
        }
    }
}

/// Ends the unit if the closure panics, so the stream and the mode are not left capturing.
struct UnitGuard<'a> {
    cuda: &'a Cuda,
    active: bool,
}

impl UnitGuard<'_> {
    fn finish(mut self) -> super::exec::UnitReport {
        self.active = false;
        self.cuda.dev.end_unit()
    }
}

impl Drop for UnitGuard<'_> {
    fn drop(&mut self) {
        if self.active {
            let dev = &self.cuda.dev;
            if dev.exec().mode == Mode::Capture {
                // Discard the partial capture; nothing of it ran.
                let _ = dev.stream.end_capture(sys::CUgraphInstantiate_flags(0));
            }
            dev.end_unit();
        }
    }
}

impl Cuda {
    fn graphs(&self) -> std::sync::MutexGuard<'_, Graphs> {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The CUDA backend's `Backend::graph_run`.
    pub(crate) fn run_graph(&self, key: &str, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        if !self.opts.graphs {
            return f();
        }
        {
            let st = self.dev.exec();
            if st.mode != Mode::Eager {
                // Nested unit: its work joins the running one.
                st.check_thread("graph_run")?;
                drop(st);
                return f();
            }
        }
        let entry = self.graphs().entries.remove(key);
        match entry {
            None => self.warm_up(key, f, 0),
            Some(Entry::Eager) => {
                self.graphs().entries.insert(key.to_string(), Entry::Eager);
                self.graphs().stats.eager += 1;
                f()
            }
            Some(Entry::Warm { stale }) => self.capture(key, f, stale),
            Some(Entry::Captured { graph, sig, stale }) => self.replay(key, f, graph, sig, stale),
        }
    }

    /// Runs `f` in `mode` as one unit; returns its result and what it did.
    fn unit(&self, mode: Mode, f: &mut dyn FnMut() -> Result<()>) -> Result<(Result<()>, super::exec::UnitReport)> {
        self.dev.exec().begin(mode)?;
        let guard = UnitGuard { cuda: self, active: true };
        let r = f();
        Ok((r, guard.finish()))
    }

    /// First run of a key: eager, tracking host operations.
    fn warm_up(&self, key: &str, f: &mut dyn FnMut() -> Result<()>, stale: u32) -> Result<()> {
        let (r, rep) = self.unit(Mode::Track, f)?;
        r?;
        let mut g = self.graphs();
        g.stats.warmups += 1;
        if rep.host_ops > 0 {
            let what = rep.first_host_op.unwrap_or_default();
            g.warn_once(key, &format!("the unit performs host operations ({what}) that a graph cannot replay"));
            g.entries.insert(key.to_string(), Entry::Eager);
        } else {
            g.entries.insert(key.to_string(), Entry::Warm { stale });
        }
        Ok(())
    }

    fn capture(&self, key: &str, f: &mut dyn FnMut() -> Result<()>, stale: u32) -> Result<()> {
        let dev = &self.dev;
        if let Err(e) = dev.begin_capture() {
            return self.fall_back(key, f, &e.to_string());
        }
        let guard = UnitGuard { cuda: self, active: true };
        let r = f();
        // End the capture whatever happened: the stream must leave capture mode.
        let ended = dev.end_capture("the graph");
        let rep = guard.finish();
        let graph = match (r, ended) {
            (Ok(()), Ok(Some(graph))) if rep.host_ops == 0 => graph,
            (Ok(()), Ok(None)) if rep.host_ops == 0 => {
                // The unit enqueued nothing: nothing to replay.
                let mut g = self.graphs();
                g.entries.insert(key.to_string(), Entry::Eager);
                drop(g);
                return f();
            }
            (r, ended) => {
                let reason = match (r, ended) {
                    (Err(e), _) => e.to_string(),
                    (_, Err(e)) => e.to_string(),
                    _ => format!("host operation ({})", rep.first_host_op.unwrap_or_default()),
                };
                return self.fall_back(key, f, &reason);
            }
        };
        {
            let _st = dev.exec();
            graph.launch().map_err(|e| drv(e, format!("launching the CUDA graph of `{key}`")))?;
        }
        let mut g = self.graphs();
        g.stats.captures += 1;
        g.entries.insert(key.to_string(), Entry::Captured { graph: Graph(graph), sig: rep.sig, stale });
        Ok(())
    }

    /// A capture failed (nothing ran): run the unit eagerly. If that works, the capture was at
    /// fault and the key stays eager; if it fails too, the unit's error is returned and the key
    /// starts over next time.
    fn fall_back(&self, key: &str, f: &mut dyn FnMut() -> Result<()>, reason: &str) -> Result<()> {
        let (r, _) = self.unit(Mode::Track, f)?;
        let mut g = self.graphs();
        match r {
            Ok(()) => {
                g.stats.failed_captures += 1;
                g.warn_once(key, &format!("CUDA graph capture failed ({reason})"));
                g.entries.insert(key.to_string(), Entry::Eager);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn replay(
        &self,
        key: &str,
        f: &mut dyn FnMut() -> Result<()>,
        graph: Graph,
        sig: Vec<u8>,
        stale: u32,
    ) -> Result<()> {
        let (r, rep) = self.unit(Mode::Record, f)?;
        if r.is_ok() && rep.host_ops == 0 && rep.sig == sig {
            {
                let st = self.dev.exec();
                st.check_thread("graph launch")?;
                self.dev.bind()?;
                graph.0.launch().map_err(|e| drv(e, format!("launching the CUDA graph of `{key}`")))?;
            }
            let mut g = self.graphs();
            g.stats.replays += 1;
            // A replay that matched: the unit is stable again (stale counts consecutive misses).
            g.entries.insert(key.to_string(), Entry::Captured { graph, sig, stale: 0 });
            return Ok(());
        }
        // The unit changed (or failed while recording): the graph no longer does what it does.
        // Dropping it is fine even if an earlier launch is still running (the driver frees an
        // in-flight executable graph when it completes).
        drop(graph);
        let stale = stale + 1;
        {
            let mut g = self.graphs();
            g.stats.stale += 1;
            if stale >= MAX_STALE {
                g.warn_once(key, "the unit enqueues different work from call to call");
                g.entries.insert(key.to_string(), Entry::Eager);
                drop(g);
                return f();
            }
        }
        self.warm_up(key, f, stale)
    }

    /// graph_run counters so far.
    pub fn graph_stats(&self) -> GraphStats {
        self.graphs().stats
    }
}
