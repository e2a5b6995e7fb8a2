//! Self-tests of the SIMT shim (kernels/sim/): barriers, shuffles, votes, mma/ldmatrix/cp.async
//! emulation, atomics, diagnostics and speed. Each test runs one C++ self-test through
//! deltadit::backend::sim::selftest and prints its summary.
#![cfg(deltadit_sim)]

use deltadit::backend::sim::selftest;

fn check(name: &str) {
    let t0 = std::time::Instant::now();
    match selftest::run(name) {
        Ok(msg) => println!("shim self-test {name}: {msg} ({:.3} s)", t0.elapsed().as_secs_f64()),
        Err(e) => panic!("shim self-test {name} failed: {e}"),
    }
}

#[test]
fn barrier_bench() {
    check("barrier_bench");
}
