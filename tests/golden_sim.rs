//! The whole model through the CUDA kernels on the CPU (`--device sim`): every golden case in
//! bf16 (and the forward cases in f16) within 2e-2 relative error of diffusers' f32 result.
#![cfg(deltadit_sim)]

mod common;

use common::golden::{forward_case, sampling_case, FORWARD_CASES, SAMPLING_CASES};
use deltadit::backend::sim::Sim;
use deltadit::internals::rel_l2;
use deltadit::DType;

#[test]
fn forward_cases_bf16() {
    let be = Sim::new(DType::BF16).unwrap();
    for name in FORWARD_CASES {
        let e = forward_case(&be, name);
        assert!(e <= 2e-2, "{name}: bf16 rel err {e:.3e}");
    }
}

#[test]
fn forward_cases_f16() {
    let be = Sim::new(DType::F16).unwrap();
    for name in FORWARD_CASES {
        let e = forward_case(&be, name);
        assert!(e <= 2e-2, "{name}: f16 rel err {e:.3e}");
    }
}

#[test]
fn sampling_dpm_solver_bf16() {
    let e = sampling_case(&Sim::new(DType::BF16).unwrap(), SAMPLING_CASES[0]).0;
    assert!(e <= 2e-2, "rel err {e:.3e}");
}

#[test]
fn sampling_ddim_bf16() {
    let e = sampling_case(&Sim::new(DType::BF16).unwrap(), SAMPLING_CASES[1]).0;
    assert!(e <= 2e-2, "rel err {e:.3e}");
}

#[test]
fn sampling_lcm_bf16() {
    let e = sampling_case(&Sim::new(DType::BF16).unwrap(), SAMPLING_CASES[2]).0;
    assert!(e <= 2e-2, "rel err {e:.3e}");
}

#[test]
fn sampling_delta_dit_bf16() {
    let e = sampling_case(&Sim::new(DType::BF16).unwrap(), SAMPLING_CASES[3]).0;
    assert!(e <= 2e-2, "rel err {e:.3e}");
}

#[test]
fn sampling_sd3_flow_match_bf16() {
    let e = sampling_case(&Sim::new(DType::BF16).unwrap(), SAMPLING_CASES[4]).0;
    assert!(e <= 3e-2, "rel err {e:.3e}");
}

/// The wgmma attention kernel (kernels/attention_sm90a.cu, head dim 72) through a whole model:
/// pixart-cpu-small (28 blocks, 4 heads × 72, 64 image and 32 text tokens, seeded random weights),
/// 3 DPM-Solver++ steps with CFG, on the shim with each attention kernel and on the f32 CPU
/// backend. Random weights amplify bf16 rounding through 28 blocks (the mma kernel lands ~4e-2
/// from f32 here), so the check is relative: the wgmma kernel's latents are as close to f32 as the
/// mma kernel's, where a wrong tile, mask or pipeline stage gives errors of order 1.
#[test]
fn wgmma_attention_through_a_whole_model() {
    use deltadit::backend::cpu::Cpu;
    use deltadit::backend::AttentionKernel;
    use deltadit::cache::CacheSpec;
    use deltadit::pipeline::{sample, SampleConfig};
    use deltadit::Backend;

    let p = deltadit::internals::bench::preset("pixart-cpu-small").unwrap();
    assert_eq!(p.config.attention_head_dim, 72);
    let steps = 3;
    let inputs = deltadit::internals::bench::random_inputs(&p.config, p.latent, p.latent, p.text_len, steps, 5);
    let sc = SampleConfig::new(p.scheduler, steps, p.guidance);
    fn latents<B: Backend>(
        be: &B,
        p: &deltadit::internals::bench::Preset,
        inputs: &deltadit::pipeline::SampleInputs,
        sc: &SampleConfig,
    ) -> Vec<f32> {
        let model = p.build(be, 0).unwrap();
        let policy = "none".parse::<CacheSpec>().unwrap().build(p.config.family, model.num_blocks(), sc.steps).unwrap();
        sample(be, &model, inputs, sc, policy, &mut |_, _| {}).unwrap().latents
    }
    let sim = Sim::new(DType::BF16).unwrap();
    let mma = latents(&sim, &p, &inputs, &sc);
    let f32 = latents(&Cpu::new(2), &p, &inputs, &sc);
    let e_mma = rel_l2(&mma, &f32);
    assert!(e_mma <= 8e-2, "bf16 vs f32 with the mma kernel: {e_mma:.3e}");
    for k in AttentionKernel::wgmma_kernels() {
        sim.set_attention_kernel(k);
        let wgmma = latents(&sim, &p, &inputs, &sc);
        let (between, e_wgmma) = (rel_l2(&wgmma, &mma), rel_l2(&wgmma, &f32));
        let name = k.name();
        eprintln!(
            "pixart-cpu-small, 3 steps: {name} vs mma {between:.2e}; vs f32: mma {e_mma:.2e}, {name} {e_wgmma:.2e}"
        );
        assert!(wgmma.iter().all(|x| x.is_finite()), "non-finite latents with the {name} kernel");
        assert!(
            e_wgmma <= 1.25 * e_mma && between <= 1.25 * e_mma,
            "{name}: {e_wgmma:.3e} from f32, {between:.3e} from mma (mma: {e_mma:.3e} from f32)"
        );
    }
}

/// FLUX.1 dev and schnell forwards in bf16: RMS qk norm fused with RoPE in the qk_norm kernel,
/// the double and single blocks, packed latents.
#[test]
fn forward_flux_bf16() {
    let be = Sim::new(DType::BF16).unwrap();
    for name in ["flux-dev-tiny", "flux-schnell-tiny"] {
        let e = forward_case(&be, name);
        assert!(e <= 3e-2, "{name}: bf16 rel err {e:.3e}");
    }
}

/// Forecasting caches through the kernels: TaylorSeer on FORA's branch outputs (the forecast
/// fused into each gated residual, `residual_forecast`), on Δ-DiT's Δ and on DBCache's middle
/// (the `forecast` apply and ladder updates), step by step on the tiny 6-block PixArt with inputs
/// that change fast between steps (so that a forecast is far from plain reuse): f16 on the shim
/// (bf16 rounding is as large as a forecast's correction on this tiny model) against the same
/// policy on the f32 CPU backend, every step's output within f16 accuracy of the CPU's, and the
/// CPU's forecast several times further from plain reuse than that.
#[test]
fn forecasting_caches_f16_match_the_cpu() {
    use common::golden::{case_dir, model_dir};
    use deltadit::backend::cpu::Cpu;
    use deltadit::cache::{CacheSpec, StepPlan};
    use deltadit::model::{Conditioning, Transformer};
    use deltadit::pipeline::{Denoiser, SampleInputs};
    use deltadit::Backend;

    let name = "pixart-tiny-delta-n2-nc4-b12";
    let steps = 8;
    /// Every step's output, and how many steps reused a quantity.
    fn run<B: Backend>(be: &B, name: &str, spec: &str, steps: usize) -> (Vec<Vec<f32>>, usize) {
        let model = Transformer::load(be, &model_dir(name)).unwrap();
        let inputs = SampleInputs::from_inputs(
            &deltadit::io::Inputs::open(&case_dir(name).join("inputs.safetensors")).unwrap(),
            model.config(),
        )
        .unwrap();
        let mut cond = Conditioning { batch: 1, height: 16, width: 16, ..Default::default() };
        cond.text = inputs.cond.clone();
        let policy =
            spec.parse::<CacheSpec>().unwrap().build(model.config().family, model.num_blocks(), steps).unwrap();
        let mut d = Denoiser::new(be, &model, &cond, policy).unwrap();
        let (mut outs, mut reused) = (Vec::new(), 0);
        for step in 0..steps {
            let x: Vec<f32> = inputs.latents.iter().map(|v| v * (1.0 + 0.2 * step as f32)).collect();
            let r = d.forward(be, &x, &[900.0 - 100.0 * step as f32], step, steps).unwrap();
            reused += usize::from(matches!(r.plan, StepPlan::Reuse { .. } | StepPlan::ReuseBranches));
            outs.push(be.download(d.output()).unwrap());
        }
        (outs, reused)
    }
    let sim = Sim::new(DType::F16).unwrap();
    let cpu = Cpu::new(2);
    let (none_sim, none_cpu) = (run(&sim, name, "none", steps).0, run(&cpu, name, "none", steps).0);
    let e_none = none_sim.iter().zip(&none_cpu).map(|(a, b)| rel_l2(a, b)).fold(0.0, f64::max);
    for spec in [
        "fora:n=2,calibrator=taylor2",
        "fora:n=3,calibrator=taylor1",
        "delta:n=2,nc=3,b=4,calibrator=taylor1",
        "dbcache:fn=1,bn=1,threshold=1000,warmup=2,max-continuous=2,calibrator=taylor2",
    ] {
        let (want, reused) = run(&cpu, name, spec, steps);
        assert!(reused >= 2, "{spec}: {reused} cached steps");
        let (got, _) = run(&sim, name, spec, steps);
        let plain = spec.split(",calibrator").next().unwrap().to_string() + ",calibrator=none";
        let (reuse, _) = run(&cpu, name, &plain, steps);
        for (step, ((g, w), r)) in got.iter().zip(&want).zip(&reuse).enumerate() {
            let (e, e_reuse) = (rel_l2(g, w), rel_l2(r, w));
            eprintln!("{spec} step {step}: f16 vs f32 {e:.2e} (uncached worst {e_none:.2e}); plain reuse vs forecast {e_reuse:.2e}");
            assert!(g.iter().all(|v| v.is_finite()) && e <= 2.0 * e_none, "{spec} step {step}: f16 vs f32 {e:.3e}");
            assert!(
                e_reuse == 0.0 || e_reuse > 4.0 * e,
                "{spec} step {step}: the check cannot tell forecast from reuse"
            );
        }
        assert!(
            want.iter().zip(&reuse).any(|(w, r)| rel_l2(r, w) > 0.0),
            "{spec}: the forecast never differed from plain reuse"
        );
    }
}
