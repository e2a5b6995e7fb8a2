//! `FlowMatchEulerDiscreteScheduler` exactly as diffusers computes it (MMDIT_SPEC.md): σ from the
//! training grid with the static shift applied in `__init__` (in f32, as torch does) and again in
//! `set_timesteps` (in f64, as numpy does: SD3's tail is shifted twice), or the dynamic
//! (exponential) time shift with μ from the image token count; timesteps = 1000·σ in f32; a
//! final σ = 0; the Euler step x ← x + (σ_{i+1} − σ_i)·v in f32.

use crate::backend::{SchedulerKind, SchedulerUpdate};
use crate::{Error, Result};
use serde_json::Value;

/// The scheduler's config (`scheduler_config.json`), diffusers' defaults where keys are absent.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FlowMatchConfig {
    /// training timesteps (1000)
    pub num_train_timesteps: usize,
    /// the static shift s: σ ← s·σ / (1 + (s − 1)·σ)
    pub shift: f64,
    /// the time shift with μ from the image size (FLUX) instead of the static shift
    pub use_dynamic_shifting: bool,
    /// μ at `base_image_seq_len` tokens
    pub base_shift: f64,
    /// μ at `max_image_seq_len` tokens
    pub max_shift: f64,
    /// image tokens of `base_shift`
    pub base_image_seq_len: usize,
    /// image tokens of `max_shift`
    pub max_image_seq_len: usize,
}

impl Default for FlowMatchConfig {
    fn default() -> Self {
        FlowMatchConfig {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
        }
    }
}

fn cfg_err(key: &str, msg: impl Into<String>) -> Error {
    Error::Config { path: "scheduler_config.json".into(), key: Some(key.to_string()), msg: msg.into() }
}

impl FlowMatchConfig {
    /// Reads a `FlowMatchEulerDiscreteScheduler` config object; options this runtime does not
    /// implement (Karras/exponential/beta sigmas, a terminal shift, inverted sigmas, stochastic
    /// sampling, the linear time shift) are errors that name the key, not silently ignored.
    pub fn from_json(v: &Value) -> Result<Self> {
        let o = v.as_object().ok_or_else(|| cfg_err("", "not a JSON object"))?;
        let get = |k: &str| o.get(k).filter(|v| !v.is_null());
        let d = FlowMatchConfig::default();
        let num = |k: &str, dflt: f64| -> Result<f64> {
            match get(k) {
                None => Ok(dflt),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| cfg_err(k, format!("must be a number, found {v}"))),
            }
        };
        let int = |k: &str, dflt: usize| -> Result<usize> {
            match get(k) {
                None => Ok(dflt),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| cfg_err(k, format!("must be a non-negative integer, found {v}"))),
            }
        };
        let flag = |k: &str| -> Result<bool> {
            match get(k) {
                None => Ok(false),
                Some(v) => v.as_bool().ok_or_else(|| cfg_err(k, format!("must be a boolean, found {v}"))),
            }
        };
        for k in
            ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "stochastic_sampling"]
        {
            if flag(k)? {
                return Err(cfg_err(k, "true is not supported by this runtime's flow-match Euler"));
            }
        }
        if let Some(v) = get("shift_terminal") {
            return Err(cfg_err("shift_terminal", format!("{v} is not supported (only null)")));
        }
        if let Some(v) = get("time_shift_type") {
            if v.as_str() != Some("exponential") {
                return Err(cfg_err("time_shift_type", format!("{v} is not supported (only \"exponential\")")));
            }
        }
        let c = FlowMatchConfig {
            num_train_timesteps: int("num_train_timesteps", d.num_train_timesteps)?,
            shift: num("shift", d.shift)?,
            use_dynamic_shifting: flag("use_dynamic_shifting")?,
            base_shift: num("base_shift", d.base_shift)?,
            max_shift: num("max_shift", d.max_shift)?,
            base_image_seq_len: int("base_image_seq_len", d.base_image_seq_len)?,
            max_image_seq_len: int("max_image_seq_len", d.max_image_seq_len)?,
        };
        if !(1..=100_000).contains(&c.num_train_timesteps) {
            return Err(cfg_err(
                "num_train_timesteps",
                format!("{} is out of range 1..=100000", c.num_train_timesteps),
            ));
        }
        if c.shift <= 0.0 {
            return Err(cfg_err("shift", format!("{} must be > 0", c.shift)));
        }
        if c.use_dynamic_shifting && c.max_image_seq_len == c.base_image_seq_len {
            return Err(cfg_err(
                "max_image_seq_len",
                "must differ from base_image_seq_len (μ is interpolated between them)",
            ));
        }
        Ok(c)
    }

    /// μ for `image_seq_len` image tokens (diffusers' `calculate_shift`, as the pipelines call it).
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        let m = (self.max_shift - self.base_shift) / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
        let b = self.base_shift - m * self.base_image_seq_len as f64;
        image_seq_len as f64 * m + b
    }
}

/// The schedule of one run.
pub struct FlowMatch {
    /// σ of each step, then a final 0 (f32)
    pub sigmas: Vec<f32>,
    /// 1000·σ of each step (f32), the model's timestep
    pub timesteps: Vec<f32>,
}

/// `e^μ / (e^μ + (1/t − 1))`, diffusers' exponential time shift with σ = 1.
fn time_shift(mu: f64, t: f64) -> f64 {
    mu.exp() / (mu.exp() + (1.0 / t - 1.0))
}

impl FlowMatch {
    /// `set_timesteps(steps)` (SD3: static shift), or with μ when the config shifts dynamically
    /// (`image_seq_len` gives μ as the pipelines compute it).
    pub fn new(cfg: &FlowMatchConfig, steps: usize, image_seq_len: usize) -> Result<Self> {
        if steps == 0 || steps > cfg.num_train_timesteps {
            return Err(Error::param("steps", steps, format!("1..={}", cfg.num_train_timesteps)));
        }
        let n_train = cfg.num_train_timesteps;
        // __init__, in f32: σ = linspace(1, N, N)[::-1] / N, statically shifted unless dynamic.
        let s32 = cfg.shift as f32;
        let init = |t: f32| -> f32 {
            let s = t / n_train as f32;
            if cfg.use_dynamic_shifting {
                s
            } else {
                s32 * s / (1.0 + (s32 - 1.0) * s)
            }
        };
        let (sigma_max, sigma_min) = (init(n_train as f32) as f64, init(1.0) as f64);
        // set_timesteps, in f64 (numpy): t = linspace(1000·σ_max, 1000·σ_min, n), σ = t / 1000.
        let (start, stop) = (sigma_max * n_train as f64, sigma_min * n_train as f64);
        let step = if steps > 1 { (stop - start) / (steps - 1) as f64 } else { 0.0 };
        let mu = cfg.mu(image_seq_len);
        let sigmas: Vec<f32> = (0..steps)
            .map(|i| {
                let t = if i + 1 == steps && steps > 1 { stop } else { i as f64 * step + start };
                let s = t / n_train as f64;
                let shifted = if cfg.use_dynamic_shifting {
                    time_shift(mu, s)
                } else {
                    cfg.shift * s / (1.0 + (cfg.shift - 1.0) * s)
                };
                shifted as f32
            })
            .chain(std::iter::once(0.0))
            .collect();
        let timesteps = sigmas[..steps].iter().map(|&s| s * n_train as f32).collect();
        Ok(FlowMatch { sigmas, timesteps })
    }

    /// FluxPipeline's schedule: σ = linspace(1, 1/n, n) passed in (as f32), then the time shift
    /// with μ (dynamic configs) or the static shift, in f32 as numpy computes on an f32 array.
    pub fn with_linear_sigmas(cfg: &FlowMatchConfig, steps: usize, image_seq_len: usize) -> Result<Self> {
        if steps == 0 || steps > cfg.num_train_timesteps {
            return Err(Error::param("steps", steps, format!("1..={}", cfg.num_train_timesteps)));
        }
        let (start, stop) = (1.0f64, 1.0 / steps as f64);
        let step = if steps > 1 { (stop - start) / (steps - 1) as f64 } else { 0.0 };
        let mu = cfg.mu(image_seq_len);
        let e = mu.exp() as f32;
        let s32 = cfg.shift as f32;
        let sigmas: Vec<f32> = (0..steps)
            .map(|i| {
                let t = if i + 1 == steps && steps > 1 { stop } else { i as f64 * step + start } as f32;
                if cfg.use_dynamic_shifting {
                    e / (e + (1.0 / t - 1.0))
                } else {
                    s32 * t / (1.0 + (s32 - 1.0) * t)
                }
            })
            .chain(std::iter::once(0.0))
            .collect();
        let timesteps = sigmas[..steps].iter().map(|&s| s * cfg.num_train_timesteps as f32).collect();
        Ok(FlowMatch { sigmas, timesteps })
    }

    /// The Euler update of step `i`: x ← x + (σ_{i+1} − σ_i)·v.
    pub fn update(&self, i: usize) -> SchedulerUpdate {
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        SchedulerUpdate { kind: SchedulerKind::FlowEuler, c: [dt, self.sigmas[i], 0.0, 0.0, 0.0, 0.0] }
    }
}
