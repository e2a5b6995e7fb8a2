//! Self-tests of the SIMT shim (kernels/sim/): each test runs one C++ self-test of
//! kernels/sim/selftest.cpp through deltadit::internals::sim::selftest and prints its summary
//! (`cargo test --release --test sim_shim -- --nocapture` shows the timings).
#![cfg(deltadit_sim)]

use deltadit::internals::sim::selftest;

fn check(name: &str) -> String {
    let t0 = std::time::Instant::now();
    match selftest::run(name) {
        Ok(msg) => {
            println!("shim self-test {name}: {msg} [{:.3} s]", t0.elapsed().as_secs_f64());
            msg
        }
        Err(e) => panic!("shim self-test {name} failed: {e}"),
    }
}

macro_rules! shim_tests {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $( $(#[$doc])* #[test] fn $name() { check(stringify!($name)); } )*
        const ALL: &[&str] = &[$(stringify!($name)),*];
    };
}

shim_tests! {
    /// threadIdx/blockIdx/blockDim/gridDim over 1-D to 3-D grids and blocks (partial warps).
    geometry,
    /// Data through dynamic and template-static shared memory over many barrier phases;
    /// __syncthreads_count/and/or.
    barrier,
    /// Threads that exit (whole warp, scattered, mid-loop) no longer count at later barriers.
    exited_threads,
    /// __shfl_sync/_up/_down/_xor for widths 1..32 and six types against their definition; a
    /// shuffle inside `if (warp == 1)`; two partial-mask groups in one warp.
    shfl,
    /// __ballot_sync/__any_sync/__all_sync (incl. a partial mask), match_any, reduce, activemask.
    vote,
    /// mma.m16n8k16 bf16 against a float64 matmul, fragments per the PTX layouts.
    mma_bf16,
    /// mma.m16n8k16 f16 against a float64 matmul.
    mma_f16,
    /// ldmatrix x1/x2/x4 with and without .trans against the definition.
    ldmatrix,
    /// An attention tile (QK^T, C->A reuse, PV) with cp.async, ldmatrix and mma together.
    attention_tile,
    /// cp.async data visible only after the matching wait_group; zero-fill; wait_all.
    cp_async,
    /// Atomics on shared and global memory.
    atomics,
    /// wgmma m64nNk16 (A from shared memory / registers, B K-major / N-major) against a float64
    /// matmul; a missing fence or wait, a swizzled descriptor, A registers changed in flight and a
    /// partial warpgroup are reported.
    wgmma,
    /// Shared-memory accounting: ldmatrix and cp.async wavefronts (conflict-free, 2-, 4-, 8-way and
    /// broadcast address patterns), wgmma operand bytes and MACs, mma.sync MACs, against counts
    /// worked out by hand.
    smem_traffic,
    /// Correct kernels give the same results with warps reversed and shuffled.
    warp_orders,
    /// A planted missing __syncthreads is caught under reversed and shuffled warp orders.
    missing_barrier,
    /// Planted divergent collectives, exits, misaligned/out-of-bounds accesses, __trap and bad
    /// launches fail with a message naming the problem, kernel, block and thread.
    diagnostics,
    /// A deadlock (half a warp in __syncwarp, half at __syncthreads) is reported.
    deadlock,
    /// 128 threads x 10,000 barrier phases (expect ~0.01-0.03 s; asserts < 2 s) and the raw
    /// context switch cost.
    bench_barrier,
    /// Cost of an emulated mma and shuffle per warp-op.
    bench_warp,
}

/// Every C++ self-test has a Rust test above (a new C++ case must be added to the list).
#[test]
fn all_selftests_listed() {
    let mut cpp = selftest::names();
    cpp.sort();
    let mut rs: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    rs.sort();
    assert_eq!(cpp, rs);
}

/// Launches from several threads at once (as the test harness does) stay independent.
#[test]
fn concurrent_launches() {
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        for round in 0..4 {
            s.spawn(move || {
                for name in ["barrier", "shfl", "attention_tile", "cp_async", "diagnostics", "warp_orders"] {
                    if let Err(e) = selftest::run(name) {
                        panic!("{name} on thread {round}: {e}");
                    }
                }
            });
        }
    });
    println!("4 threads x 6 self-tests concurrently in {:.3} s", t0.elapsed().as_secs_f64());
}
