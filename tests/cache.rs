//! Cache policies (schedules without a model, validation), the engine's Δ bookkeeping, an
//! independent re-implementation of Δ-DiT on other N/N_c/b/step counts, and batch independence.

mod common;

use common::rel_l2;
use deltadit::backend::cpu::Cpu;
use deltadit::backend::{Backend, Cfg};
use deltadit::cache::{
    schedule, CachePolicy, CacheSpec, Calibrator, DbCache, Delta, DeltaAdaptive, FirstBlock, Fora, StepInfo, StepPlan,
};
use deltadit::internals::{ModelParts, WorkspaceParts};
use deltadit::io::Inputs;
use deltadit::model::{Family, Transformer};
use deltadit::pipeline::{sample, Denoiser, ForwardInputs, SampleConfig, SampleInputs};
use deltadit::sampler::{Scheduler, SchedulerName};
use deltadit::{DType, Error};
use std::path::PathBuf;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn plans(p: &mut dyn CachePolicy, steps: usize, layers: usize, probes: &[Option<f32>]) -> Vec<StepPlan> {
    p.reset();
    (0..steps).map(|step| p.plan(&StepInfo::new(step, steps, layers, probes.get(step).copied().flatten()))).collect()
}

// ---------------------------------------------------------------- schedules

#[test]
fn delta_paper_preset_20_steps() {
    let mut d = Delta::new(2, 21, 12, 28, 20).unwrap();
    let s = schedule(&mut d, 20, 28);
    let blocks: Vec<usize> = s.iter().map(|p| p.blocks_run(28)).collect();
    assert_eq!(blocks, [28, 7].repeat(10));
    assert_eq!(blocks.iter().sum::<usize>(), 350, "(28 + 7)/2 = 17.5 blocks a step → 1.60×");
    for (i, p) in s.iter().enumerate() {
        match (i % 2, i < 12) {
            (0, _) => assert!(matches!(p, StepPlan::Full { .. }), "step {i}: {p:?}"),
            (_, true) => assert_eq!(*p, StepPlan::CachedRear(21), "step {i}"),
            (_, false) => assert_eq!(*p, StepPlan::CachedFront(21), "step {i}"),
        }
    }
    // Full steps store only what the next cached step reads.
    assert_eq!(s[0], StepPlan::Full { store_front: false, store_rear: true, store_branches: false, store_rest: false });
    assert_eq!(
        s[12],
        StepPlan::Full { store_front: true, store_rear: false, store_branches: false, store_rest: false }
    );
    assert_eq!(
        s[10],
        StepPlan::Full { store_front: false, store_rear: true, store_branches: false, store_rest: false }
    );
}

#[test]
fn delta_lcm_preset_and_other_parameters() {
    let p = Delta::preset(Family::PixArt, 28, 4);
    assert_eq!((p.n, p.nc, p.b), (2, 4, 2));
    let p20 = Delta::paper(Family::PixArt, 28, 20);
    assert_eq!((p20.n, p20.nc, p20.b, p20.reverse, p20.calibrator), (2, 21, 12, false, Calibrator::None));
    // the shipped default: N = 3, N_c = ⌊⅚ L⌋, TaylorSeer 1, the paper's b and order
    let d20 = Delta::preset(Family::PixArt, 28, 20);
    assert_eq!((d20.n, d20.nc, d20.b, d20.reverse, d20.calibrator), (3, 23, 12, false, Calibrator::Taylor(1)));
    let spec = "delta".parse::<CacheSpec>().unwrap();
    assert_eq!(spec.build(Family::PixArt, 12, 20).unwrap().params(), "n=3,nc=10,b=12,calibrator=taylor1");
    assert_eq!(spec.build(Family::DiT, 8, 20).unwrap().params(), "n=3,nc=6,b=12,calibrator=taylor1");
    let plain = "delta:n=2,nc=9,calibrator=none".parse::<CacheSpec>().unwrap();
    assert_eq!(plain.build(Family::PixArt, 12, 20).unwrap().params(), "n=2,nc=9,b=12");
    // SD3: ¾ of the blocks, the reverse order, b at ¾ of the steps (SD3.5-medium at 28 steps)
    let sd3 = Delta::paper(Family::Sd3, 24, 28);
    assert_eq!((sd3.n, sd3.nc, sd3.b, sd3.reverse), (2, 18, 21, true));
    assert_eq!(spec.build(Family::Sd3, 24, 28).unwrap().params(), "n=3,nc=20,b=21,order=reverse,calibrator=taylor1");
    let paper = "delta:order=paper".parse::<CacheSpec>().unwrap();
    assert_eq!(paper.build(Family::Sd3, 24, 28).unwrap().params(), "n=3,nc=20,b=21,calibrator=taylor1");
    let sd3_lcm = Delta::preset(Family::Sd3, 24, 4);
    assert_eq!((sd3_lcm.n, sd3_lcm.nc, sd3_lcm.b, sd3_lcm.reverse), (2, 3, 2, false));
    // FLUX.1 (19 double + 38 single blocks) at dev's 28 steps: ¾ of all 57 blocks, the rear
    // range [14, 57) on every cached step (b = steps), starting 5 blocks before the single
    // blocks; models/flux-digits (2 + 4) at 20 steps: the calibrated n=2, nc=5, b=20.
    let flux = Delta::paper(Family::Flux, 57, 28);
    assert_eq!((flux.n, flux.nc, flux.b, flux.reverse), (2, 43, 28, false));
    assert_eq!(57 - flux.nc, 14);
    assert_eq!(spec.build(Family::Flux, 6, 20).unwrap().params(), "n=3,nc=5,b=20,calibrator=taylor1");
    assert_eq!(Delta::preset(Family::Flux, 57, 28).nc, 47);
    let mut d = Delta::paper(Family::Flux, 6, 20);
    assert!(schedule(&mut d, 20, 6).iter().skip(1).step_by(2).all(|p| *p == StepPlan::CachedRear(5)));
    // schnell's 4 steps: the few-step rule
    let schnell = Delta::preset(Family::Flux, 57, 4);
    assert_eq!((schnell.n, schnell.nc, schnell.b, schnell.reverse), (2, 8, 2, false));
    let mut d = Delta::new(2, 4, 2, 28, 4).unwrap();
    assert_eq!(
        schedule(&mut d, 4, 28),
        vec![
            StepPlan::Full { store_front: false, store_rear: true, store_branches: false, store_rest: false },
            StepPlan::CachedRear(4),
            StepPlan::Full { store_front: true, store_rear: false, store_branches: false, store_rest: false },
            StepPlan::CachedFront(4),
        ]
    );
    // N = 3, boundary inside an interval: step 4 (< b) is rear, step 5 (≥ b) front.
    let mut d = Delta::new(3, 5, 5, 12, 9).unwrap();
    let s = schedule(&mut d, 9, 12);
    assert_eq!(s[3], StepPlan::Full { store_front: true, store_rear: true, store_branches: false, store_rest: false });
    assert_eq!((s[4], s[5]), (StepPlan::CachedRear(5), StepPlan::CachedFront(5)));
    assert_eq!(s.iter().map(|p| p.blocks_run(12)).collect::<Vec<_>>(), [12, 7, 7, 12, 7, 7, 12, 7, 7]);
    // N = 1: every step full, nothing stored.
    let mut d = Delta::new(1, 3, 2, 6, 5).unwrap();
    assert!(schedule(&mut d, 5, 6).iter().all(|p| *p == StepPlan::FULL));
}

#[test]
fn fora_schedule() {
    let mut f = Fora::new(3).unwrap();
    let s = schedule(&mut f, 7, 28);
    assert_eq!(s.iter().map(|p| p.blocks_run(28)).collect::<Vec<_>>(), [28, 0, 0, 28, 0, 0, 28]);
    assert_eq!(s[0], StepPlan::Full { store_front: false, store_rear: false, store_branches: true, store_rest: false });
    assert_eq!(s[6], StepPlan::FULL, "the last step stores nothing nobody reads");
}

#[test]
fn delta_adaptive_refreshes_on_accumulated_change_warmup_and_cap() {
    let mut a = DeltaAdaptive::new(0.1, 2, 2, 4, 5, 8, 10).unwrap();
    let probes = [
        None,
        Some(0.5),
        Some(0.03),
        Some(0.03),
        Some(0.05),
        Some(0.01),
        Some(0.01),
        Some(0.01),
        Some(0.2),
        Some(0.01),
    ];
    let s = plans(&mut a, 10, 8, &probes);
    use StepPlan::*;
    let kinds: Vec<String> = s
        .iter()
        .map(|p| match p {
            Full { .. } => "F".into(),
            CachedRear(_) => "R".into(),
            CachedFront(_) => "Fr".into(),
            other => format!("{other:?}"),
        })
        .collect();
    // 0,1 warm-up; 2: acc .03 → cached; 3: acc .06 → cached; 4: acc .11 ≥ .1 → full;
    // 5: .01 cached (≥ b=5 → front); 6: .02 cached; 7: cap of 2 → full; 8: .2 → full; 9: .01 cached.
    assert_eq!(kinds, ["F", "F", "R", "R", "F", "Fr", "Fr", "F", "F", "Fr"]);
    // Without a probe the policy cannot measure: it refreshes.
    assert!(plans(&mut a, 4, 8, &[]).iter().all(|p| matches!(p, Full { .. })));
}

#[test]
fn first_block_skips_below_threshold_with_optional_cap() {
    let mut f = FirstBlock::new(0.05, None).unwrap();
    let probes = [None, Some(0.01), Some(0.2), Some(0.04), Some(0.049), Some(0.0)];
    let s = plans(&mut f, 6, 8, &probes);
    use StepPlan::*;
    // DBCache F1B0: quantity 0 is the Δ of blocks [1, L).
    let (full, cached) = (Compute { store: 1 }, Reuse { quantity: 0, from: 1, to: 8 });
    assert_eq!(s, vec![full, cached, full, cached, cached, cached]);
    let mut capped = FirstBlock::new(0.05, Some(2)).unwrap();
    assert_eq!(plans(&mut capped, 6, 8, &probes)[5], full, "third cached step in a row is capped");
    assert_eq!(s.iter().map(|p| p.blocks_run(8)).collect::<Vec<_>>(), [8, 1, 8, 1, 1, 1]);
}

/// DBCache decides as cache-dit's `can_cache` does: no cache in the warm-up, a cap on cached
/// steps of the run (M) and in a row (MC), a threshold on the Fn residual's change, a threshold
/// ≥ 1 caching whenever a full step stored the residual.
#[test]
fn dbcache_decides_as_cache_dit() {
    use StepPlan::*;
    let probes = [None, Some(0.01), Some(0.01), Some(0.2), Some(0.01), Some(0.01), Some(0.01), Some(0.01)];
    let kinds = |p: &mut DbCache, probes: &[Option<f32>]| -> String {
        plans(p, probes.len(), 10, probes)
            .iter()
            .map(|p| match p {
                Compute { store: 1 } => 'F',
                Reuse { quantity: 0, from: 2, to: 9 } => 'C',
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let mut d = DbCache::new(2, 1, 0.1, 2, None, None, Calibrator::None, 10).unwrap();
    assert_eq!(kinds(&mut d, &probes), "FFCFCCCC", "warm-up 2, then below the threshold except step 3");
    let mut m = DbCache::new(2, 1, 0.1, 1, Some(3), None, Calibrator::None, 10).unwrap();
    assert_eq!(kinds(&mut m, &probes), "FCCFCFFF", "at most 3 cached steps in the run");
    let mut mc = DbCache::new(2, 1, 0.1, 1, None, Some(2), Calibrator::None, 10).unwrap();
    assert_eq!(kinds(&mut mc, &probes), "FCCFCCFC", "at most 2 in a row");
    let mut always = DbCache::new(2, 1, 1.0, 0, None, None, Calibrator::None, 10).unwrap();
    assert_eq!(kinds(&mut always, &[None, Some(5.0), Some(50.0)]), "FCC", "threshold ≥ 1 always caches");
    // reset forgets the counts
    assert_eq!(kinds(&mut m, &probes), "FCCFCFFF");
    assert_eq!(d.params(), "fn=2,bn=1,threshold=0.1,warmup=2,max-cached=none,max-continuous=none,calibrator=none");
    // cache-dit's steps computation mask (dynamic): 1 = a full step, 0 = the threshold decides;
    // the warm-up (4) is cut to the mask's leading ones (1)
    let mut sm =
        DbCache::new(2, 1, 0.1, 4, None, None, Calibrator::None, 10).unwrap().with_steps_mask("10110000", 8).unwrap();
    assert_eq!(kinds(&mut sm, &probes), "FCFFCCCC", "mask bits 1 run in full, warm-up cut to 1");
    assert!(sm.params().ends_with(",steps-mask=10110000"), "{}", sm.params());
    let bad = DbCache::new(2, 1, 0.1, 2, None, None, Calibrator::None, 10).unwrap();
    for (mask, want) in [("1011", "8 bits"), ("1011000x", "0 and 1")] {
        match bad.clone().with_steps_mask(mask, 8) {
            Err(deltadit::Error::Param { name, allowed, .. }) => {
                assert_eq!(name, "steps-mask");
                assert!(allowed.contains(want), "{mask}: {allowed}");
            }
            other => panic!("{mask}: {other:?}"),
        }
    }
}

/// `first-block` is DBCache F1B0 without warm-up, its max-cached DBCache's max-continuous: the
/// same decisions on any probe sequence.
#[test]
fn first_block_is_dbcache_f1b0() {
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    for cap in [None, Some(1), Some(2), Some(3)] {
        for threshold in [0.05f32, 0.3, 0.6, 1.0, 7.0] {
            let probes: Vec<Option<f32>> =
                (0..30).map(|i| if i == 0 || rnd() < 0.1 { None } else { Some(rnd()) }).collect();
            let mut f = FirstBlock::new(threshold, cap).unwrap();
            let mut d = DbCache::new(1, 0, threshold, 0, None, cap, Calibrator::None, 12).unwrap();
            assert_eq!(plans(&mut f, 30, 12, &probes), plans(&mut d, 30, 12, &probes), "{threshold} {cap:?}");
        }
    }
}

// ---------------------------------------------------------------- validation

fn param_name(e: Error) -> String {
    match e {
        Error::Param { name, .. } => name,
        other => panic!("expected a parameter error, got {other}"),
    }
}

#[test]
fn parameters_are_validated_with_the_allowed_range() {
    assert_eq!(param_name(Delta::new(0, 4, 2, 28, 20).unwrap_err()), "n");
    assert_eq!(param_name(Delta::new(2, 0, 2, 28, 20).unwrap_err()), "nc");
    assert_eq!(param_name(Delta::new(2, 28, 2, 28, 20).unwrap_err()), "nc");
    assert_eq!(param_name(Delta::new(2, 4, 21, 28, 20).unwrap_err()), "b");
    assert!(Delta::new(2, 27, 20, 28, 20).is_ok(), "nc = L − 1 and b = steps are allowed");
    assert_eq!(param_name(DeltaAdaptive::new(0.0, 2, 2, 4, 2, 28, 20).unwrap_err()), "threshold");
    assert_eq!(param_name(DeltaAdaptive::new(-1.0, 2, 2, 4, 2, 28, 20).unwrap_err()), "threshold");
    assert_eq!(param_name(DeltaAdaptive::new(f32::NAN, 2, 2, 4, 2, 28, 20).unwrap_err()), "threshold");
    assert_eq!(param_name(DeltaAdaptive::new(0.1, 2, 0, 4, 2, 28, 20).unwrap_err()), "max-cached");
    assert_eq!(param_name(DeltaAdaptive::new(0.1, 21, 2, 4, 2, 28, 20).unwrap_err()), "warmup");
    assert_eq!(param_name(Fora::new(0).unwrap_err()), "n");
    assert_eq!(param_name(FirstBlock::new(0.0, None).unwrap_err()), "threshold");
    let msg = Delta::new(2, 30, 2, 28, 20).unwrap_err().to_string();
    assert!(
        msg.contains("nc") && msg.contains("30") && msg.contains("28"),
        "message names parameter, value and range: {msg}"
    );
}

#[test]
fn cache_specs_parse_and_reject_bad_values() {
    let d = "delta:n=3,nc=5,b=6".parse::<CacheSpec>().unwrap().build(Family::PixArt, 28, 20).unwrap();
    assert_eq!((d.name(), d.params()), ("delta", "n=3,nc=5,b=6,calibrator=taylor1".to_string()));
    let preset = "delta".parse::<CacheSpec>().unwrap().build(Family::PixArt, 28, 20).unwrap();
    assert_eq!(preset.params(), "n=3,nc=23,b=12,calibrator=taylor1");
    let a = "delta-adaptive:threshold=0.1,warmup=2,max-cached=3"
        .parse::<CacheSpec>()
        .unwrap()
        .build(Family::PixArt, 28, 20)
        .unwrap();
    assert_eq!(a.name(), "delta-adaptive");
    assert!(a.params().starts_with("threshold=0.1,warmup=2,max-cached=3"));
    assert_eq!(
        "fora:n=3".parse::<CacheSpec>().unwrap().build(Family::DiT, 28, 50).unwrap().params(),
        "n=3,calibrator=taylor1"
    );
    assert_eq!(
        "fora:calibrator=none".parse::<CacheSpec>().unwrap().build(Family::DiT, 28, 50).unwrap().params(),
        "n=3"
    );
    let adaptive = "delta-adaptive".parse::<CacheSpec>().unwrap().build(Family::PixArt, 12, 20).unwrap();
    assert_eq!(adaptive.params(), "threshold=0.12,warmup=2,max-cached=1,nc=9,b=0");
    let first_block = |spec: &str| spec.parse::<CacheSpec>().unwrap().build(Family::DiT, 28, 50).unwrap().params();
    assert_eq!(first_block("first-block"), "threshold=0.2,max-cached=2,calibrator=taylor1");
    assert_eq!(first_block("first-block:threshold=0.05,calibrator=none"), "threshold=0.05,max-cached=2");
    assert_eq!(first_block("first-block:max-cached=none,calibrator=none"), "threshold=0.2");
    assert_eq!(
        first_block("first-block:threshold=0.3,max-cached=4,calibrator=taylor2"),
        "threshold=0.3,max-cached=4,calibrator=taylor2"
    );
    assert_eq!(
        param_name("first-block:max-cached=few".parse::<CacheSpec>().unwrap().build(Family::DiT, 28, 50).unwrap_err()),
        "max-cached"
    );
    assert_eq!(param_name("magic".parse::<CacheSpec>().unwrap_err()), "cache");
    assert_eq!(param_name("delta:q=1".parse::<CacheSpec>().unwrap_err()), "cache delta parameter");
    assert_eq!(param_name("delta:n=two".parse::<CacheSpec>().unwrap().build(Family::PixArt, 28, 20).unwrap_err()), "n");
    assert_eq!(
        param_name("delta:nc=28".parse::<CacheSpec>().unwrap().build(Family::PixArt, 28, 20).unwrap_err()),
        "nc"
    );
    assert_eq!(
        param_name("first-block:threshold=-1".parse::<CacheSpec>().unwrap().build(Family::PixArt, 28, 20).unwrap_err()),
        "threshold"
    );
}

// ---------------------------------------------------------------- engine bookkeeping

/// The tiny 6-block PixArt of the golden Δ-DiT case, its inputs, and the conditioning of one
/// forward on its prompt (batch 1, a 16×16 latent).
fn tiny_pixart(be: &Cpu) -> (Transformer<Cpu>, SampleInputs, deltadit::model::Conditioning) {
    let dir = data("pixart-tiny-delta-n2-nc4-b12");
    let model = Transformer::load(be, &dir).unwrap();
    let inputs =
        SampleInputs::from_inputs(&Inputs::open(&dir.join("inputs.safetensors")).unwrap(), model.config()).unwrap();
    let mut cond = deltadit::model::Conditioning { batch: 1, height: 16, width: 16, ..Default::default() };
    cond.text = inputs.cond.clone();
    (model, inputs, cond)
}

/// Runs step 0 (full, storing) and step 1 (cached) of `spec` on identical inputs: a cached step
/// whose input equals the full step's must reproduce its output, which checks that anchors and
/// deltas are stored and applied at the right boundaries.
fn cached_step_reproduces_full_step(spec: &str, expect: StepPlan) {
    let be = Cpu::default();
    let (model, inputs, cond) = tiny_pixart(&be);
    let layers = model.num_blocks();
    let policy = spec.parse::<CacheSpec>().unwrap().build(Family::PixArt, layers, 10).unwrap();
    let mut d = Denoiser::new(&be, &model, &cond, policy).unwrap();
    let mut outs = Vec::new();
    for step in 0..2 {
        let r = d.forward(&be, &inputs.latents, &[500.0], step, 10).unwrap();
        if step == 1 {
            assert_eq!(r.plan, expect, "{spec}");
        }
        outs.push(be.download(d.output()).unwrap());
    }
    let e = rel_l2(&outs[1], &outs[0]);
    assert!(e < 1e-6, "{spec}: cached step differs from the full step by {e:.2e}");
}

/// `Denoiser::shared` (holding an `Arc` of the model, as the Python package does) runs exactly
/// what `Denoiser::new` (borrowing it) runs: the same plans and bit-identical outputs over a
/// cached run; it holds a share of the model.
#[test]
fn shared_denoiser_equals_borrowed() {
    let be = Cpu::default();
    let (model, inputs, cond) = tiny_pixart(&be);
    let model = std::sync::Arc::new(model);
    let policy =
        || "delta:n=2,nc=4,b=2,calibrator=none".parse::<CacheSpec>().unwrap().build(Family::PixArt, 6, 4).unwrap();
    let mut borrowed = Denoiser::new(&be, &model, &cond, policy()).unwrap();
    let mut shared = Denoiser::shared(&be, model.clone(), &cond, policy()).unwrap();
    assert_eq!(std::sync::Arc::strong_count(&model), 2, "the shared denoiser holds a share of the model");
    for (step, t) in [900.0f32, 700.0, 500.0, 300.0].into_iter().enumerate() {
        let x: Vec<f32> = inputs.latents.iter().map(|v| v * (1.0 + step as f32 * 0.1)).collect();
        let a = borrowed.forward(&be, &x, &[t], step, 4).unwrap();
        let b = shared.forward(&be, &x, &[t], step, 4).unwrap();
        assert_eq!(a.plan, b.plan, "step {step}");
        assert_eq!(be.download(borrowed.output()).unwrap(), be.download(shared.output()).unwrap(), "step {step}");
    }
}

#[test]
fn delta_rear_bookkeeping() {
    cached_step_reproduces_full_step("delta:n=2,nc=4,b=5,calibrator=none", StepPlan::CachedRear(4));
}

#[test]
fn delta_front_bookkeeping() {
    cached_step_reproduces_full_step("delta:n=2,nc=4,b=1,calibrator=none", StepPlan::CachedFront(4));
}

#[test]
fn delta_half_depth_ranges_share_a_boundary() {
    // nc = L/2: Δ_front ends where Δ_rear's anchor is taken (delta fused, anchor copied).
    cached_step_reproduces_full_step("delta:n=2,nc=3,b=5,calibrator=none", StepPlan::CachedRear(3));
    cached_step_reproduces_full_step("delta:n=2,nc=3,b=0,calibrator=none", StepPlan::CachedFront(3));
}

#[test]
fn fora_bookkeeping() {
    cached_step_reproduces_full_step("fora:n=2,calibrator=none", StepPlan::ReuseBranches);
}

#[test]
fn dbcache_bookkeeping() {
    // Fn = 2, Bn = 1 of 6: the middle [2, 5) is skipped, its Δ applied at 5, block 5 runs.
    for cal in ["none", "taylor1", "taylor2"] {
        cached_step_reproduces_full_step(
            &format!("dbcache:fn=2,bn=1,threshold=1000,warmup=1,calibrator={cal}"),
            StepPlan::Reuse { quantity: 0, from: 2, to: 5 },
        );
    }
    sd3_cached_step_reproduces_full_step(
        "dbcache:fn=1,bn=1,threshold=1000,warmup=1",
        StepPlan::Reuse { quantity: 0, from: 1, to: 2 },
    );
    flux_cached_step_reproduces_full_step(
        "dbcache:fn=1,bn=1,threshold=1000,warmup=1",
        StepPlan::Reuse { quantity: 0, from: 1, to: 3 },
    );
    flux_cached_step_reproduces_full_step(
        "dbcache:fn=1,bn=0,threshold=1000,warmup=1,calibrator=taylor2",
        StepPlan::Reuse { quantity: 0, from: 1, to: 4 },
    );
}

/// Calibrated quantities over several steps of identical inputs: every stored snapshot is the
/// same, so each TaylorSeer derivative is exactly 0 and every cached step must reproduce the full
/// step's output — a ladder that reads an unwritten (NaN-poisoned) snapshot, indexes the wrong
/// level or applies the wrong coefficient fails this.
#[test]
fn calibrated_quantities_on_repeated_inputs() {
    let be = Cpu::default();
    let (model, inputs, cond) = tiny_pixart(&be);
    let steps = 9;
    for spec in [
        "dbcache:fn=1,bn=1,threshold=1000,warmup=2,max-continuous=1,calibrator=taylor2",
        "dbcache:fn=2,bn=0,threshold=1000,warmup=1,max-continuous=2,calibrator=taylor1",
        "delta:n=2,nc=3,b=5,calibrator=taylor2",
        "fora:n=2,calibrator=taylor2",
        "fora:n=3,calibrator=taylor1",
        "dbcache:fn=1,bn=1,threshold=1000,warmup=1,max-continuous=2,calibrator=taylor2,verify=1000",
        "dbcache:fn=1,bn=0,threshold=1000,warmup=1,verify=1000",
    ] {
        let policy = spec.parse::<CacheSpec>().unwrap().build(Family::PixArt, model.num_blocks(), steps).unwrap();
        let mut d = Denoiser::new(&be, &model, &cond, policy).unwrap();
        let mut full = None;
        let mut cached = 0;
        for step in 0..steps {
            let r = d.forward(&be, &inputs.latents, &[500.0], step, steps).unwrap();
            let out = be.download(d.output()).unwrap();
            let reference = full.get_or_insert_with(|| out.clone());
            let e = rel_l2(&out, reference);
            assert!(e < 1e-6, "{spec}: step {step} ({:?}) differs from the full step by {e:.2e}", r.plan);
            cached += usize::from(matches!(r.plan, StepPlan::Reuse { .. }));
        }
        assert!(cached >= 3, "{spec}: {cached} cached steps");
    }
}

/// Verified forecasting: a check that always fails turns every cached step into a full step
/// (reported as `Compute`, one block more than the model for the failed check) whose output is
/// the uncached model's on changing inputs; one that always passes runs the middle's last block
/// on the forecast input, one block more than the plain cached step.
#[test]
fn dbcache_verified_forecast_falls_back_to_the_uncached_model() {
    let be = Cpu::default();
    let (model, inputs, cond) = tiny_pixart(&be);
    let layers = model.num_blocks();
    let steps = 6;
    let build = |spec: &str| spec.parse::<CacheSpec>().unwrap().build(Family::PixArt, layers, steps).unwrap();
    let mut none = Denoiser::new(&be, &model, &cond, build("none")).unwrap();
    let mut fails = Denoiser::new(
        &be,
        &model,
        &cond,
        build("dbcache:fn=1,bn=1,threshold=1000,warmup=1,calibrator=taylor1,verify=1e-30"),
    )
    .unwrap();
    let mut passes =
        Denoiser::new(&be, &model, &cond, build("dbcache:fn=1,bn=1,threshold=1000,warmup=1,verify=1e30")).unwrap();
    for step in 0..steps {
        let x: Vec<f32> = inputs.latents.iter().map(|v| v * (1.0 + 0.15 * step as f32)).collect();
        let t = [900.0 - 150.0 * step as f32];
        none.forward(&be, &x, &t, step, steps).unwrap();
        let r = fails.forward(&be, &x, &t, step, steps).unwrap();
        assert_eq!(r.plan, StepPlan::Compute { store: 1 }, "step {step}");
        assert_eq!(r.blocks_run, if step == 0 { layers } else { layers + 1 }, "step {step}");
        let e = rel_l2(&be.download(fails.output()).unwrap(), &be.download(none.output()).unwrap());
        assert!(e < 1e-6, "step {step}: a failed check's full step differs from the uncached model by {e:.2e}");
        let r = passes.forward(&be, &x, &t, step, steps).unwrap();
        if step > 0 {
            assert_eq!(r.plan, StepPlan::Reuse { quantity: 0, from: 1, to: layers - 1 }, "step {step}");
            assert_eq!(r.blocks_run, 3, "Fn + the check's block + Bn");
        }
    }
    assert_eq!(
        param_name("dbcache:verify=0".parse::<CacheSpec>().unwrap().build(Family::PixArt, layers, steps).unwrap_err()),
        "verify"
    );
}

#[test]
fn first_block_bookkeeping() {
    cached_step_reproduces_full_step(
        "first-block:threshold=1000,calibrator=none",
        StepPlan::Reuse { quantity: 0, from: 1, to: 6 },
    );
}

/// The same on SD3.5 (qk norm, dual attention in block 0, 3 blocks, batch 2): every range and
/// branch cache covers both streams — a front range's Δ must move the context stream too (the
/// blocks after it read it), which a cache of the image stream alone would get wrong.
fn sd3_cached_step_reproduces_full_step(spec: &str, expect: StepPlan) {
    let be = Cpu::default();
    let dir = data("sd35-tiny-nonsquare");
    let model = Transformer::load(&be, &dir).unwrap();
    let inputs =
        ForwardInputs::from_inputs(&Inputs::open(&dir.join("inputs.safetensors")).unwrap(), model.config()).unwrap();
    let policy = spec.parse::<CacheSpec>().unwrap().build(Family::Sd3, model.num_blocks(), 10).unwrap();
    let mut d = Denoiser::new(&be, &model, &inputs.cond, policy).unwrap();
    let mut outs = Vec::new();
    for step in 0..2 {
        let r = d.forward(&be, &inputs.hidden_states, &inputs.timestep, step, 10).unwrap();
        if step == 1 {
            assert_eq!(r.plan, expect, "{spec}");
        }
        outs.push(be.download(d.output()).unwrap());
    }
    let e = rel_l2(&outs[1], &outs[0]);
    assert!(e < 1e-6, "sd3 {spec}: cached step differs from the full step by {e:.2e}");
}

#[test]
fn sd3_delta_front_covers_the_context_stream() {
    sd3_cached_step_reproduces_full_step("delta:n=2,nc=1,b=0,order=paper,calibrator=none", StepPlan::CachedFront(1));
    sd3_cached_step_reproduces_full_step("delta:n=2,nc=2,b=0,order=paper,calibrator=none", StepPlan::CachedFront(2));
}

#[test]
fn sd3_delta_rear_ends_at_the_context_pre_only_block() {
    sd3_cached_step_reproduces_full_step("delta:n=2,nc=1,b=5,order=paper,calibrator=none", StepPlan::CachedRear(1));
    sd3_cached_step_reproduces_full_step("delta:n=2,nc=2,b=5,order=paper,calibrator=none", StepPlan::CachedRear(2));
}

#[test]
fn sd3_fora_and_first_block_bookkeeping() {
    sd3_cached_step_reproduces_full_step("fora:n=2,calibrator=none", StepPlan::ReuseBranches);
    sd3_cached_step_reproduces_full_step(
        "first-block:threshold=1000,calibrator=none",
        StepPlan::Reuse { quantity: 0, from: 1, to: 3 },
    );
}

/// SD3's streams, and where the context stops being read (after the context-pre-only block).
#[test]
fn sd3_streams_and_where_the_context_is_live() {
    let be = Cpu::default();
    let dir = data("sd35-tiny-nonsquare");
    let model = Transformer::load(&be, &dir).unwrap();
    assert_eq!(model.streams(), ["image", "context"]);
    assert_eq!((model.live_streams(0), model.live_streams(2), model.live_streams(3)), (2, 2, 1));
}

/// The same on FLUX.1-dev (2 double + 2 single blocks, batch 2, guidance embedded, RoPE): ranges
/// inside the double blocks, across the boundary to the single blocks (the same two streams on
/// both sides) and ending at the last block (the context dead after it), FORA's branches of both
/// block kinds, first-block.
fn flux_cached_step_reproduces_full_step(spec: &str, expect: StepPlan) {
    let be = Cpu::default();
    let dir = data("flux-dev-tiny");
    let model = Transformer::load(&be, &dir).unwrap();
    let inputs =
        ForwardInputs::from_inputs(&Inputs::open(&dir.join("inputs.safetensors")).unwrap(), model.config()).unwrap();
    let policy = spec.parse::<CacheSpec>().unwrap().build(Family::Flux, model.num_blocks(), 10).unwrap();
    let mut d = Denoiser::new(&be, &model, &inputs.cond, policy).unwrap();
    let mut outs = Vec::new();
    for step in 0..2 {
        let r = d.forward(&be, &inputs.hidden_states, &inputs.timestep, step, 10).unwrap();
        if step == 1 {
            assert_eq!(r.plan, expect, "{spec}");
        }
        outs.push(be.download(d.output()).unwrap());
    }
    let e = rel_l2(&outs[1], &outs[0]);
    assert!(e < 1e-6, "flux {spec}: cached step differs from the full step by {e:.2e}");
}

#[test]
fn flux_delta_front_within_and_across_the_double_single_boundary() {
    for nc in 1..=3 {
        flux_cached_step_reproduces_full_step(
            &format!("delta:n=2,nc={nc},b=0,calibrator=none"),
            StepPlan::CachedFront(nc),
        );
    }
}

#[test]
fn flux_delta_rear_ends_at_the_last_single_block() {
    for nc in 1..=3 {
        flux_cached_step_reproduces_full_step(
            &format!("delta:n=2,nc={nc},b=5,calibrator=none"),
            StepPlan::CachedRear(nc),
        );
    }
}

#[test]
fn flux_fora_and_first_block_bookkeeping() {
    flux_cached_step_reproduces_full_step("fora:n=2,calibrator=none", StepPlan::ReuseBranches);
    flux_cached_step_reproduces_full_step(
        "first-block:threshold=1000,calibrator=none",
        StepPlan::Reuse { quantity: 0, from: 1, to: 4 },
    );
}

/// FLUX's streams: image and context through the double and the single blocks; the context is
/// read up to the last block.
#[test]
fn flux_streams_and_where_the_context_is_live() {
    let be = Cpu::default();
    let model = Transformer::load(&be, &data("flux-dev-tiny")).unwrap();
    assert_eq!(model.num_blocks(), 4);
    assert_eq!(model.streams(), ["image", "context"]);
    assert_eq!(
        (model.live_streams(0), model.live_streams(2), model.live_streams(3), model.live_streams(4)),
        (2, 2, 2, 1)
    );
}

// ---------------------------------------------------------------- independent Δ-DiT

/// Δ-DiT written out step by step from DELTA_DIT.md with host-side snapshots of every block
/// boundary (no engine, no fused taps), on the PixArt DPM-Solver++ CFG loop.
fn reference_delta(
    model: &Transformer<Cpu>,
    be: &Cpu,
    inp: &SampleInputs,
    steps: usize,
    n: usize,
    nc: usize,
    b: usize,
) -> (Vec<f32>, Vec<usize>) {
    let l = model.num_blocks();
    let (bs, h, w) = (inp.shape[0], inp.shape[2], inp.shape[3]);
    let mut cond = deltadit::model::Conditioning { batch: 2 * bs, height: h, width: w, ..Default::default() };
    let (u, cd) = (inp.uncond.clone().unwrap(), inp.cond.clone().unwrap());
    cond.text = Some(deltadit::model::TextInput {
        embeds: [u.embeds, cd.embeds].concat(),
        mask: Some([u.mask.unwrap(), cd.mask.unwrap()].concat()),
        len: cd.len,
    });
    let ctx = model.context(be, &cond).unwrap();
    let mut ws = model.workspace(be, &ctx).unwrap();
    let sched = Scheduler::new(SchedulerName::DpmSolverPP, steps).unwrap();
    let mut latents = be.upload(&inp.latents, &inp.shape, DType::F32).unwrap();
    let mut eps = be.alloc(&inp.shape, DType::F32).unwrap();
    let mut x0_prev = be.alloc(&inp.shape, DType::F32).unwrap();
    let (mut d_front, mut d_rear) = (Vec::new(), Vec::new());
    let mut blocks = Vec::new();
    for (i, &t) in sched.timesteps().iter().enumerate() {
        let lat = be.download(&latents).unwrap();
        be.write(ws.input_mut(), &[lat.clone(), lat].concat()).unwrap();
        be.write(ws.timesteps_mut(), &vec![t; 2 * bs]).unwrap();
        model.embed_step(be, &ctx, &mut ws).unwrap();
        let sub = |a: &[f32], bb: &[f32]| a.iter().zip(bb).map(|(x, y)| x - y).collect::<Vec<f32>>();
        let add = |a: &[f32], bb: &[f32]| a.iter().zip(bb).map(|(x, y)| x + y).collect::<Vec<f32>>();
        if i % n == 0 {
            let mut hs = vec![be.download(ws.hidden()).unwrap()];
            for k in 0..l {
                model.run_block_range(be, &ctx, &mut ws, k..k + 1).unwrap();
                hs.push(be.download(ws.hidden()).unwrap());
            }
            d_front = sub(&hs[nc], &hs[0]);
            d_rear = sub(&hs[l], &hs[l - nc]);
            blocks.push(l);
        } else if i < b {
            model.run_block_range(be, &ctx, &mut ws, 0..l - nc).unwrap();
            let x = be.download(ws.hidden()).unwrap();
            be.write(ws.hidden_mut(), &add(&x, &d_rear)).unwrap();
            blocks.push(l - nc);
        } else {
            let x = be.download(ws.hidden()).unwrap();
            be.write(ws.hidden_mut(), &add(&x, &d_front)).unwrap();
            model.run_block_range(be, &ctx, &mut ws, nc..l).unwrap();
            blocks.push(l - nc);
        }
        model.finish_step(be, &mut ws).unwrap();
        be.cfg_combine(ws.output(), Cfg::On { scale: 4.5, cond_first: false }, &mut eps).unwrap();
        be.scheduler_step(&sched.update(i), &mut latents, &eps, Some(&mut x0_prev), None).unwrap();
    }
    (be.download(&latents).unwrap(), blocks)
}

#[test]
fn delta_matches_an_independent_implementation_on_other_parameters() {
    let be = Cpu::default();
    let dir = data("pixart-tiny-delta-n2-nc4-b12");
    let model = Transformer::load(&be, &dir).unwrap();
    let inputs =
        SampleInputs::from_inputs(&Inputs::open(&dir.join("inputs.safetensors")).unwrap(), model.config()).unwrap();
    // (steps, N, N_c, b) on the 6-block model
    for &(steps, n, nc, b) in &[(10, 3, 2, 5), (8, 2, 3, 0), (8, 2, 3, 8), (9, 4, 5, 6), (6, 1, 3, 2), (7, 2, 1, 3)] {
        let (want, want_blocks) = reference_delta(&model, &be, &inputs, steps, n, nc, b);
        let policy = Box::new(Delta::new(n, nc, b, 6, steps).unwrap());
        let cfg = SampleConfig::new(SchedulerName::DpmSolverPP, steps, 4.5);
        let out = sample(&be, &model, &inputs, &cfg, policy, &mut |_, _| {}).unwrap();
        assert_eq!(out.blocks_run, want_blocks, "steps {steps} N {n} Nc {nc} b {b}: blocks_run");
        let e = rel_l2(&out.latents, &want);
        assert!(e <= 1e-5, "steps {steps} N {n} Nc {nc} b {b}: rel err {e:.2e}");
    }
}

// ---------------------------------------------------------------- batches

#[test]
fn samples_in_one_cfg_batch_do_not_interfere() {
    let be = Cpu::default();
    let dir = data("pixart-tiny-delta-n2-nc4-b12");
    let model = Transformer::load(&be, &dir).unwrap();
    let one =
        SampleInputs::from_inputs(&Inputs::open(&dir.join("inputs.safetensors")).unwrap(), model.config()).unwrap();
    // A second prompt: other latents, embeddings and mask.
    let mut rng = common::Rng::new(11);
    let mut two = one.clone();
    two.latents = rng.normal_vec(one.latents.len(), 1.0);
    let mut c2 = one.cond.clone().unwrap();
    c2.embeds = rng.normal_vec(c2.embeds.len(), 1.0);
    c2.mask = Some((0..c2.len).map(|i| if i < 3 { 1.0 } else { 0.0 }).collect());
    two.cond = Some(c2);
    let both = SampleInputs {
        latents: [one.latents.clone(), two.latents.clone()].concat(),
        shape: vec![2, one.shape[1], one.shape[2], one.shape[3]],
        cond: Some(deltadit::model::TextInput {
            embeds: [one.cond.as_ref().unwrap().embeds.clone(), two.cond.as_ref().unwrap().embeds.clone()].concat(),
            mask: Some(
                [one.cond.as_ref().unwrap().mask.clone().unwrap(), two.cond.as_ref().unwrap().mask.clone().unwrap()]
                    .concat(),
            ),
            len: one.cond.as_ref().unwrap().len,
        }),
        uncond: Some(deltadit::model::TextInput {
            embeds: [one.uncond.as_ref().unwrap().embeds.clone(), two.uncond.as_ref().unwrap().embeds.clone()].concat(),
            mask: Some(
                [
                    one.uncond.as_ref().unwrap().mask.clone().unwrap(),
                    two.uncond.as_ref().unwrap().mask.clone().unwrap(),
                ]
                .concat(),
            ),
            len: one.cond.as_ref().unwrap().len,
        }),
        resolution: None,
        class_labels: None,
        pooled: None,
        uncond_pooled: None,
        noise: None,
        image_ids: None,
    };
    for spec in ["none", "delta:n=2,nc=4,b=5,calibrator=none", "fora:n=2,calibrator=none"] {
        let run = |inp: &SampleInputs| {
            let cfg = SampleConfig::new(SchedulerName::DpmSolverPP, 8, 4.5);
            let policy = spec.parse::<CacheSpec>().unwrap().build(Family::PixArt, 6, 8).unwrap();
            sample(&be, &model, inp, &cfg, policy, &mut |_, _| {}).unwrap().latents
        };
        let (a, b, ab) = (run(&one), run(&two), run(&both));
        let half = a.len();
        assert!(rel_l2(&ab[..half], &a) <= 1e-5, "{spec}: sample 0 changed by batching");
        assert!(rel_l2(&ab[half..], &b) <= 1e-5, "{spec}: sample 1 changed by batching");
        assert!(rel_l2(&a, &b) > 1e-2, "{spec}: the two prompts must differ for this test to mean anything");
    }
}
