//! The golden cases of tests/data (computed with diffusers 0.42.1 in f32) through the CPU
//! backend: forward cases within 1e-5 relative error, sampling cases within 1e-4 (and every
//! intermediate step of the DPM-Solver++ case).

mod common;

use common::golden::{expected_f32, forward_case, sampling_case};
use common::rel_l2;
use deltadit::backend::cpu::Cpu;

#[test]
fn forward_pixart_tiny() {
    assert!(forward_case(&Cpu::default(), "pixart-tiny") <= 1e-5);
}

#[test]
fn forward_pixart_nonsquare_micro_conditions() {
    assert!(forward_case(&Cpu::default(), "pixart-tiny-nonsquare-ar") <= 1e-5);
}

#[test]
fn forward_pixart_bf16_weights() {
    assert!(forward_case(&Cpu::default(), "pixart-tiny-bf16-weights") <= 1e-5);
}

#[test]
fn forward_dit_tiny() {
    assert!(forward_case(&Cpu::default(), "dit-tiny") <= 1e-5);
}

#[test]
fn sampling_pixart_dpm_solver_20_cfg() {
    let name = "pixart-tiny-dpmpp20-cfg";
    let (e, out) = sampling_case(&Cpu::default(), name);
    let per_step = expected_f32(name, "latents_per_step");
    let n = out.latents.len();
    for (i, l) in out.latents_per_step.iter().enumerate() {
        let ei = rel_l2(l, &per_step[i * n..(i + 1) * n]);
        assert!(ei <= 1e-4, "step {i}: rel err {ei:.3e}");
    }
    assert!(e <= 1e-4);
}

#[test]
fn sampling_dit_ddim_10_cfg() {
    assert!(sampling_case(&Cpu::default(), "dit-tiny-ddim10-cfg").0 <= 1e-4);
}

#[test]
fn sampling_pixart_lcm_4_injected_noise() {
    assert!(sampling_case(&Cpu::default(), "pixart-tiny-lcm4").0 <= 1e-4);
}

#[test]
fn sampling_pixart_delta_dit_n2_nc4_b12() {
    assert!(sampling_case(&Cpu::default(), "pixart-tiny-delta-n2-nc4-b12").0 <= 1e-4);
}

#[test]
fn forward_sd3_tiny() {
    assert!(forward_case(&Cpu::default(), "sd3-tiny") <= 1e-5);
}

#[test]
fn forward_sd35_qk_norm_dual_attention_nonsquare() {
    assert!(forward_case(&Cpu::default(), "sd35-tiny-nonsquare") <= 1e-5);
}

#[test]
fn sampling_sd3_flow_match_12_cfg() {
    assert!(sampling_case(&Cpu::default(), "sd3-tiny-flowmatch12-cfg").0 <= 1e-4);
}

#[test]
fn forward_flux_dev_guidance_embedding() {
    assert!(forward_case(&Cpu::default(), "flux-dev-tiny") <= 1e-5);
}

#[test]
fn forward_flux_schnell() {
    assert!(forward_case(&Cpu::default(), "flux-schnell-tiny") <= 1e-5);
}

#[test]
fn sampling_flux_dev_dynamic_shift_8() {
    assert!(sampling_case(&Cpu::default(), "flux-dev-tiny-sampling8").0 <= 1e-4);
}
