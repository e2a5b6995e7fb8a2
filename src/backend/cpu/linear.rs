//! GEMM with bias and activation: the reference for cuBLASLt's bias/GELU epilogues.

use super::elementwise::apply_activation_slice;
use super::ROW_CHUNK;
use crate::backend::Activation;
use gemm::Parallelism;
use rayon::prelude::*;

/// `out[m, n] = act(Σ_k x[m, k]·w[n, k] + bias[n])`, all row-major.
#[allow(clippy::too_many_arguments)]
pub fn linear_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) {
    debug_assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    // Seed the output with the bias so the GEMM accumulates onto it (one pass fewer).
    match bias {
        Some(b) => out[..m * n].par_chunks_mut(n * ROW_CHUNK).for_each(|rows| {
            rows.chunks_mut(n).for_each(|r| r.copy_from_slice(b));
        }),
        None => out[..m * n].fill(0.0),
    }
    let par = if threads > 1 && m * n * k >= 1 << 15 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: the slices hold at least m·k, n·k and m·n elements (checked by the caller's shape
    // checks, asserted above in debug builds); the strides describe row-major x and out and w
    // read as its transpose ([k, n] with column stride k), and out does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
    out[..m * n].par_chunks_mut(n * ROW_CHUNK).for_each(|c| apply_activation_slice(c, act));
}
