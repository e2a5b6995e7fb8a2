//! The op suite of tests/common/ops.rs on the sim backend: the CUDA kernels through the SIMT shim
//! against the f32 CPU reference, in bf16 and f16, on exactly the shapes tests/gpu.rs runs on a
//! GPU. Then what only the shim can do: other warp orders (a missing barrier or an
//! order-dependent sum shows up when the shim runs a block's warps in another order), raw kernel
//! launches the op API cannot express (the streamed norm kernel on a small grid, the activation
//! in place), and the determinism of rel_l1 and of the adaptive cache policies' decisions.
//!
//! The warp order is process-wide: the tests that change it (`any_warp_order_*`) take the write
//! side of `ORDER`, every other test holds the read side. (Their names sort first, so libtest
//! starts them before the long tests: a waiting writer holds new readers back.) Run with
//! `--nocapture` to see the measured errors.
#![cfg(deltadit_sim)]

mod common;

use common::ops::{self, Ops, WgmmaTable, DTYPES, TOL};
use common::Rng;
use deltadit::backend::sim::Sim;
use deltadit::backend::{Activation, AttentionKernel};
use deltadit::internals::sim::{set_warp_order, WarpOrder};
use deltadit::{Backend, DType};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static ORDER: RwLock<()> = RwLock::new(());

/// The warp orders besides the default one.
const ORDERS: [WarpOrder; 3] = [WarpOrder::Reversed, WarpOrder::Shuffled(7), WarpOrder::Shuffled(1234)];

fn sim(dt: DType) -> Sim {
    Sim::new(dt).expect("sim backend")
}

/// The default warp order for the test's duration.
fn in_order() -> RwLockReadGuard<'static, ()> {
    ORDER.read().unwrap_or_else(|e| e.into_inner())
}

/// Exclusive use of the warp order; back to in-order when dropped.
struct Orders(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

impl Drop for Orders {
    fn drop(&mut self) {
        set_warp_order(WarpOrder::InOrder);
    }
}

fn orders() -> Orders {
    Orders(ORDER.write().unwrap_or_else(|e| e.into_inner()))
}

/// Runs a suite function on the sim in bf16 and f16.
fn each_dtype(f: impl Fn(&Sim)) {
    let _order = in_order();
    for dt in DTYPES {
        f(&sim(dt));
    }
}

// ---- the op suite --------------------------------------------------------------------------------

// One #[test] per suite function of tests/common/ops.rs (`op_suite!`), named as listed there.
crate::op_suite!(each_dtype);

/// Each wgmma kernel (the shim emulates all three) in tests of its own: its op cases, then
/// PixArt-α 1024's 4096-token self-attention (the longest case on the shim).
fn wgmma(k: AttentionKernel, table: WgmmaTable) {
    each_dtype(|be| assert!(ops::attention_wgmma_d72(be, &[k], &[table])));
}

#[test]
fn attention_wgmma_d72_wgmma() {
    wgmma(AttentionKernel::Wgmma, WgmmaTable::Ops);
}

#[test]
fn attention_wgmma_d72_wgmma_qregs() {
    wgmma(AttentionKernel::WgmmaQRegs, WgmmaTable::Ops);
}

#[test]
fn attention_wgmma_d72_wgmma_qregs3() {
    wgmma(AttentionKernel::WgmmaQRegs3, WgmmaTable::Ops);
}

#[test]
fn attention_wgmma_d72_4096_tokens_wgmma() {
    wgmma(AttentionKernel::Wgmma, WgmmaTable::Tokens4096);
}

#[test]
fn attention_wgmma_d72_4096_tokens_wgmma_qregs() {
    wgmma(AttentionKernel::WgmmaQRegs, WgmmaTable::Tokens4096);
}

#[test]
fn attention_wgmma_d72_4096_tokens_wgmma_qregs3() {
    wgmma(AttentionKernel::WgmmaQRegs3, WgmmaTable::Tokens4096);
}

#[test]
fn attention_wgmma_d72_covers_every_wgmma_kernel() {
    let tested = [AttentionKernel::Wgmma, AttentionKernel::WgmmaQRegs, AttentionKernel::WgmmaQRegs3];
    assert_eq!(AttentionKernel::wgmma_kernels(), tested, "a wgmma kernel without its tests above");
}

#[test]
fn sanitize_attention_wgmma_small() {
    each_dtype(|be| assert!(ops::attention_wgmma_d72(be, &AttentionKernel::wgmma_kernels(), &[WgmmaTable::Sanitize])));
}

// ---- determinism ---------------------------------------------------------------------------------

/// rel_l1 at sizes of hundreds to 1024 blocks: bit-identical sums on repeated calls and under
/// every warp order (its block reduction must not depend on which warp finishes first).
#[test]
fn any_warp_order_rel_l1_bit_identical_and_repeatable() {
    let _orders = orders();
    set_warp_order(WarpOrder::InOrder);
    for dt in DTYPES {
        let be = sim(dt);
        for (what, a, b, want) in ops::rel_l1_repeatable(&be) {
            for order in ORDERS {
                set_warp_order(order);
                let got = be.rel_l1(&a, &b).unwrap();
                assert_eq!(ops::bits(got), ops::bits(want), "{what} under {order:?}: {got:?}, in order {want:?}");
            }
            set_warp_order(WarpOrder::InOrder);
        }
    }
}

/// Two identical sampling runs with delta-adaptive, first-block and dbcache (TaylorSeer order 2,
/// the forecast kernel) plan the same steps from
/// bit-identical probes.
#[test]
fn adaptive_policies_plan_identically_twice() {
    let _order = in_order();
    ops::plan_sequences_repeat(&sim(DType::BF16));
}

// ---- sim only: warp orders and raw launches ------------------------------------------------------

/// Multi-warp rows combine warps through shared memory behind a barrier, and the streamed kernel
/// relies on per-lane cp.async ordering: a missing barrier or wait shows up when the shim runs the
/// warps in another order.
#[test]
fn any_warp_order_norm_modulate() {
    let _orders = orders();
    for order in [WarpOrder::Reversed, WarpOrder::Shuffled(7)] {
        set_warp_order(order);
        ops::norm_modulate_case(&sim(DType::BF16), (2, 3, 4096), 300);
        ops::norm_modulate_case(&sim(DType::F16), (1, 3, 1001), 301);
        ops::norm_modulate_case(&sim(DType::BF16), (3, 9, 1152), 302);
    }
}

/// Attention under other warp orders: a missing barrier between the tiles' copies and their use.
#[test]
fn any_warp_order_attention_no_missing_barrier() {
    use ops::{Bias, Case};
    let _orders = orders();
    let cases = [
        Case::new(72, 257, 257).bh(1, 2).bias(Bias::RandomMask(0.8)),
        Case::new(128, 130, 100).bh(2, 1),
        Case::new(64, 65, 200).bias(Bias::KeepOne),
        Case::new(72, 200, 200).bh(1, 2).bias(Bias::RandomMask(0.8)).kernel(AttentionKernel::Wgmma),
        Case::new(72, 200, 200).bh(1, 1).bias(Bias::RandomMask(0.8)).kernel(AttentionKernel::WgmmaQRegs),
        Case::new(72, 200, 200).bh(1, 1).kernel(AttentionKernel::WgmmaQRegs3),
    ];
    let be = sim(DType::BF16);
    for order in ORDERS {
        set_warp_order(order);
        for (i, c) in cases.iter().enumerate() {
            let (rel, max) = ops::attention_errors(&be, c, 600 + i as u64);
            assert!(rel <= 1e-2 && max <= 3e-2, "{order:?} {c:?}: relative error {rel:.3e}, max {max:.3e}");
        }
    }
}

/// The streamed kernel with a grid far smaller than the launcher's: every warp loops over many
/// rows, refilling its shared-memory slot each time (the launcher gives each warp one row).
#[test]
fn norm_modulate_stream_small_grid() {
    use deltadit::internals::kernels::params::{NormModulateParams, NORM_STAGES, NORM_THREADS};
    use deltadit::internals::kernels::{family, KernelDevice, LaunchCfg};
    let _order = in_order();
    for dt in DTYPES {
        for &(batch, tokens, dim) in &[(3usize, 257usize, 1152usize), (2, 33, 144)] {
            let s = sim(dt);
            let o = Ops::new(&s);
            let mut rng = Rng::new(310);
            let rows = batch * tokens;
            let x = o.rand(&mut rng, &[rows, dim], dt, 1.5, 3.0);
            let m = o.rand(&mut rng, &[batch, 6 * dim], dt, 0.5, 0.0);
            let (mut ys, mut yc) = o.outputs(&[rows, dim], dt);
            o.cpu.norm_modulate(&x.c, &m.c, 3, 4, 1e-6, &mut yc).unwrap();
            let p = NormModulateParams {
                x: s.ptr(&x.d),
                modv: s.ptr(&m.d),
                y: s.ptr_mut(&mut ys),
                rows: rows as i64,
                tokens: tokens as i64,
                mod_batch_stride: 6 * dim as i64,
                dim: dim as i32,
                shift_row: 3,
                scale_row: 4,
                eps: 1e-6,
                row_threads: 32,
                _pad: 0,
            };
            let mut cfg = LaunchCfg::linear(3, NORM_THREADS).unwrap();
            cfg.smem = (NORM_THREADS / 32 * NORM_STAGES) * (dim * dt.size()) as u32;
            let kernel = family::NORM_MODULATE_STREAM.for_dtype(dt).unwrap();
            // SAFETY: x, ys [rows, dim] and m [batch, 6·dim] hold every element the kernel
            // touches for these params, of its dtype.
            unsafe { s.launch(kernel, &p, cfg) }.unwrap();
            o.check(&format!("norm_modulate_stream 3 CTAs {dt} [{batch}·{tokens}, {dim}]"), &ys, &yc, TOL);
        }
    }
}

/// In place (x and y the same buffer) through the kernel directly: the op API cannot alias them.
#[test]
fn activation_in_place() {
    use deltadit::internals::kernels::params::{ActivationParams, EW_THREADS};
    use deltadit::internals::kernels::{family, KernelDevice, LaunchCfg};
    let _order = in_order();
    for dt in DTYPES {
        for &(rows, cols) in &[(7usize, 1152usize), (5, 100)] {
            let s = sim(dt);
            let o = Ops::new(&s);
            let mut rng = Rng::new(650);
            let mut x = o.rand(&mut rng, &[rows, cols], dt, 2.0, 0.0);
            let b = o.rand(&mut rng, &[cols], dt, 1.0, 0.0);
            let (_, mut oc) = o.outputs(&[rows, cols], dt);
            o.cpu.activation(&x.c, Some(&b.c), Activation::GeluTanh, &mut oc).unwrap();
            let xp = s.ptr_mut(&mut x.d);
            let p = ActivationParams {
                x: xp,
                y: xp,
                bias: s.ptr(&b.d),
                n: (rows * cols) as i64,
                cols: cols as i64,
                ld: cols as i64,
            };
            let kernel = family::ACTIVATION_GELU_TANH.for_dtype(dt).unwrap();
            // SAFETY: x [rows, cols] (read and written in place) and b [cols] of the kernel's dtype.
            unsafe { s.launch(kernel, &p, LaunchCfg::linear(3, EW_THREADS).unwrap()) }.unwrap();
            o.check(&format!("activation in place {dt} [{rows}, {cols}]"), &x.d, &oc, TOL);
        }
    }
}
