//! Shared-memory bank conflicts of the kernels, counted by the SIMT shim (kernels/sim/smem_banks.cpp:
//! the wavefronts of every ldmatrix and cp.async against the conflict-free count) at the shapes the
//! models use. A CPU-side check of a performance property: the kernel comments claim these
//! accesses are conflict-free, and a GPU is not needed to hold them to it.
#![cfg(deltadit_sim)]

mod common;

use common::{random, Rng};
use deltadit::backend::kernels::AttentionKernel;
use deltadit::backend::sim::{count_smem_banks, Sim, SmemBanks};
use deltadit::backend::{AttentionShape, ColSlice};
use deltadit::{Backend, DType};

/// Self-attention over a fused `[n, 3·heads·d]` QKV tensor (the model's layout), or cross-attention
/// against `nk` keys of a fused `[nk, 2·heads·d]` K|V tensor.
fn attention_banks(kernel: AttentionKernel, head_dim: usize, nq: usize, nk: Option<usize>) -> SmemBanks {
    let sim = Sim::new(DType::BF16).unwrap();
    sim.set_attention_kernel(kernel);
    let mut rng = Rng::new(head_dim as u64 * 1000 + nq as u64);
    let heads = 2;
    let w = heads * head_dim;
    let mut out = sim.alloc(&[nq, w], DType::BF16).unwrap();
    let shape = AttentionShape { batch: 1, heads, head_dim, nq, nk: nk.unwrap_or(nq), scale: (head_dim as f32).powf(-0.5) };
    let (r, banks) = match nk {
        None => {
            let (qkv, _) = random(&sim, &mut rng, &[nq, 3 * w], DType::BF16, 1.0);
            count_smem_banks(|| sim.attention(&shape, ColSlice::new(&qkv, 0), ColSlice::new(&qkv, w), ColSlice::new(&qkv, 2 * w), None, &mut out))
        }
        Some(nk) => {
            let (q, _) = random(&sim, &mut rng, &[nq, w], DType::BF16, 1.0);
            let (kv, _) = random(&sim, &mut rng, &[nk, 2 * w], DType::BF16, 1.0);
            count_smem_banks(|| sim.attention(&shape, ColSlice::new(&q, 0), ColSlice::new(&kv, 0), ColSlice::new(&kv, w), None, &mut out))
        }
    };
    r.unwrap();
    banks
}

/// Prints the counts and asserts both kinds of access took part and were conflict-free (ldmatrix
/// only where the kernel uses it).
#[track_caller]
fn check(what: &str, b: &SmemBanks, uses_ldmatrix: bool) {
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
    assert_eq!(b.cp_async.wavefronts, b.cp_async.ideal, "{what}: cp.async bank conflicts ({:.2}×)", b.cp_async.conflict_factor());
    assert_eq!(b.ldmatrix.wavefronts, b.ldmatrix.ideal, "{what}: ldmatrix bank conflicts ({:.2}×)", b.ldmatrix.conflict_factor());
}

#[test]
fn attention_mma_kernel() {
    for (d, nq, nk) in [(64, 256, None), (72, 256, None), (128, 256, None), (72, 256, Some(120))] {
        let b = attention_banks(AttentionKernel::Mma, d, nq, nk);
        check(&format!("attention.cu d{d} nq {nq} nk {nk:?}"), &b, true);
    }
}

#[test]
fn attention_wgmma_kernels() {
    for k in AttentionKernel::WGMMA {
        for nk in [None, Some(120)] {
            let b = attention_banks(k, 72, 256, nk);
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
        let (r, b) = count_smem_banks(|| sim.norm_modulate(&x, &m, 0, 1, 1e-6, &mut y));
        r.unwrap();
        check(&format!("norm_modulate [256, {dim}]"), &b, false);
    }
}
