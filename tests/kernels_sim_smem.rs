//! Shared-memory traffic of the kernels, counted by the SIMT shim (kernels/sim/smem_traffic.cpp): the
//! bank conflicts of every ldmatrix and cp.async at the shapes the models use, and for the wgmma
//! attention kernels the shared-memory bytes against the tensor-core work. CPU-side checks of
//! performance properties the kernel comments claim, which need no GPU to hold them to.
#![cfg(deltadit_sim)]

mod common;

use common::{random, Rng};
use deltadit::backend::sim::Sim;
use deltadit::backend::AttentionKernel;
use deltadit::backend::{AttentionShape, ColSlice};
use deltadit::internals::sim::{count_smem_traffic, SmemTraffic};
use deltadit::{Backend, DType};

/// Self-attention over a fused `[n, 3·heads·d]` QKV tensor (the model's layout), or cross-attention
/// against `nk` keys of a fused `[nk, 2·heads·d]` K|V tensor.
fn attention_traffic(kernel: AttentionKernel, head_dim: usize, nq: usize, nk: Option<usize>) -> SmemTraffic {
    let sim = Sim::new(DType::BF16).unwrap();
    sim.set_attention_kernel(kernel);
    let mut rng = Rng::new(head_dim as u64 * 1000 + nq as u64);
    let heads = 2;
    let w = heads * head_dim;
    let mut out = sim.alloc(&[nq, w], DType::BF16).unwrap();
    let shape =
        AttentionShape { batch: 1, heads, head_dim, nq, nk: nk.unwrap_or(nq), scale: (head_dim as f32).powf(-0.5) };
    let (r, banks) = match nk {
        None => {
            let (qkv, _) = random(&sim, &mut rng, &[nq, 3 * w], DType::BF16, 1.0);
            count_smem_traffic(|| {
                sim.attention(
                    &shape,
                    ColSlice::new(&qkv, 0),
                    ColSlice::new(&qkv, w),
                    ColSlice::new(&qkv, 2 * w),
                    None,
                    &mut out,
                )
            })
        }
        Some(nk) => {
            let (q, _) = random(&sim, &mut rng, &[nq, w], DType::BF16, 1.0);
            let (kv, _) = random(&sim, &mut rng, &[nk, 2 * w], DType::BF16, 1.0);
            count_smem_traffic(|| {
                sim.attention(
                    &shape,
                    ColSlice::new(&q, 0),
                    ColSlice::new(&kv, 0),
                    ColSlice::new(&kv, w),
                    None,
                    &mut out,
                )
            })
        }
    };
    r.unwrap();
    banks
}

/// Prints the counts and asserts both kinds of access took part and were conflict-free (ldmatrix
/// only where the kernel uses it).
#[track_caller]
fn check(what: &str, b: &SmemTraffic, uses_ldmatrix: bool) {
    println!(
        "{what}: ldmatrix {} requests, {} wavefronts for {} ({:.2}×); cp.async {} requests, {} wavefronts for {} ({:.2}×)",
        b.ldmatrix.requests,
        b.ldmatrix.wavefronts,
        b.ldmatrix.ideal,
        b.ldmatrix.conflict_factor(),
        b.cp_async.requests,
        b.cp_async.wavefronts,
        b.cp_async.ideal,
        b.cp_async.conflict_factor()
    );
    assert!(b.cp_async.requests > 0, "{what}: no cp.async counted");
    assert_eq!(b.ldmatrix.requests > 0, uses_ldmatrix, "{what}: ldmatrix requests {}", b.ldmatrix.requests);
    assert_eq!(
        b.cp_async.wavefronts,
        b.cp_async.ideal,
        "{what}: cp.async bank conflicts ({:.2}×)",
        b.cp_async.conflict_factor()
    );
    assert_eq!(
        b.ldmatrix.wavefronts,
        b.ldmatrix.ideal,
        "{what}: ldmatrix bank conflicts ({:.2}×)",
        b.ldmatrix.conflict_factor()
    );
}

#[test]
fn attention_mma_kernel() {
    for (d, nq, nk) in [(64, 256, None), (72, 256, None), (128, 256, None), (72, 256, Some(120))] {
        let b = attention_traffic(AttentionKernel::Mma, d, nq, nk);
        check(&format!("attention.cu d{d} nq {nq} nk {nk:?}"), &b, true);
    }
}

#[test]
fn attention_wgmma_kernels() {
    for k in AttentionKernel::wgmma_kernels() {
        for nk in [None, Some(120)] {
            let b = attention_traffic(k, 72, 256, nk);
            // Only the qregs kernels use ldmatrix (Q's fragments).
            check(&format!("attention_sm90a.cu {} d72 nq 256 nk {nk:?}", k.name()), &b, k != AttentionKernel::Wgmma);
        }
    }
}

#[test]
fn norm_modulate_stream() {
    let sim = Sim::new(DType::BF16).unwrap();
    let mut rng = Rng::new(5);
    for dim in [288, 1152] {
        let (x, _) = random(&sim, &mut rng, &[256, dim], DType::BF16, 1.0);
        let (m, _) = random(&sim, &mut rng, &[2, 6 * dim], DType::BF16, 0.5);
        let mut y = sim.alloc(&[256, dim], DType::BF16).unwrap();
        let (r, b) = count_smem_traffic(|| sim.norm_modulate(&x, &m, 0, 1, 1e-6, &mut y));
        r.unwrap();
        check(&format!("norm_modulate [256, {dim}]"), &b, false);
    }
}

/// kernels/attention_sm90a.cu's header argues from a model of Hopper (an SM moves 128 B of shared
/// memory and 2048 dense bf16 multiply-adds a clock) that its first tile shape needs as many clocks
/// of shared-memory traffic as of MMA, and that Q's fragments in registers cut that to ~3/4 (2
/// warpgroups) and ~2/3 (3 warpgroups). Here the same ratio comes from the kernels' own
/// instruction streams as the shim counts them (cp.async, ldmatrix, wgmma operands; the epilogue's
/// plain stores are not counted), over 16 key tiles so that loading Q weighs little.
#[test]
fn wgmma_attention_shared_memory_per_mma() {
    let ratio = |k: AttentionKernel| {
        let t = attention_traffic(k, 72, 1024, None);
        assert!(t.wgmma_macs > 0 && t.mma_macs == 0, "{}: {t:?}", k.name());
        let r = (t.smem_bytes() as f64 / 128.0) / (t.wgmma_macs as f64 / 2048.0);
        println!(
            "{:<13} shared memory {:>9} B, wgmma {:>11} MACs: {r:.3} clocks of shared memory a clock of MMA",
            k.name(),
            t.smem_bytes(),
            t.wgmma_macs
        );
        r
    };
    let (smem_q, qregs, qregs3) =
        (ratio(AttentionKernel::Wgmma), ratio(AttentionKernel::WgmmaQRegs), ratio(AttentionKernel::WgmmaQRegs3));
    // The header's numbers per 64-key tile: 78 KB for 608 MMA clocks (1.03); 58 KB (0.76); 78 KB for
    // 912 clocks (0.68); the loads of Q add a little at 1024 tokens.
    assert!((1.0..1.15).contains(&smem_q), "wgmma: {smem_q:.3}");
    assert!((0.74..0.85).contains(&qregs), "wgmma-qregs: {qregs:.3}");
    assert!((0.66..0.76).contains(&qregs3), "wgmma-qregs3: {qregs3:.3}");
}
