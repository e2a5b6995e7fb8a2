//! The whole model through the CUDA kernels on the CPU (`--device sim`): every golden case in
//! bf16 (and the forward cases in f16) within 2e-2 relative error of diffusers' f32 result.
#![cfg(deltadit_sim)]

mod common;

use common::golden::{forward_case, sampling_case, FORWARD_CASES, SAMPLING_CASES};
use deltadit::backend::sim::Sim;
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
