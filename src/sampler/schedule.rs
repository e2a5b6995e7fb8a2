//! The training noise schedule shared by the schedulers: linear betas and ᾱ, computed the way
//! PyTorch does on the CPU (MODEL_SPEC.md §6).

/// diffusers' defaults for every scheduler config here.
pub const NUM_TRAIN_TIMESTEPS: usize = 1000;
pub const BETA_START: f32 = 0.0001;
pub const BETA_END: f32 = 0.02;

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU: each half is built from its own
/// end (`start + step·i` below the midpoint, `end − step·(steps − 1 − i)` above), in f32.
pub fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 }).collect()
}

/// ᾱ_t = Π (1 − β) for the linear schedule; the product accumulates in f64 (torch's CPU cumprod
/// accumulates float in double) and each entry is rounded to f32.
pub fn alphas_cumprod() -> Vec<f32> {
    let betas = torch_linspace_f32(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS);
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0f32 - b) as f64;
            acc as f32
        })
        .collect()
}

/// numpy `round` (half to even).
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.linspace(start, stop, num)` in f64 (the last value is exactly `stop`).
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let step = (stop - start) / div;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}
