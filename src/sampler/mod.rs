//! Schedulers: timesteps and the per-step coefficients of the fused update
//! ([`crate::Backend::scheduler_step`]). The latents never leave the backend.

mod ddim;
mod dpm_solver;
mod flow_match;
mod lcm;
#[allow(missing_docs)]
pub(crate) mod schedule;

pub use flow_match::FlowMatchConfig;

use crate::backend::SchedulerUpdate;
use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;
use std::str::FromStr;

/// A solver, as diffusers configures it for PixArt and DiT (linear betas 1e-4..0.02 over 1000
/// training steps, ε prediction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchedulerName {
    /// `DPMSolverMultistepScheduler` (DPM-Solver++ 2M, midpoint, lower order final)
    DpmSolverPP,
    /// `DDIMScheduler` (η = 0)
    Ddim,
    /// `LCMScheduler`
    Lcm,
    /// `FlowMatchEulerDiscreteScheduler` (SD3, FLUX: velocity prediction)
    FlowMatchEuler,
}

impl FromStr for SchedulerName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dpm-solver++" | "dpmsolver++" | "dpm" => Ok(SchedulerName::DpmSolverPP),
            "ddim" => Ok(SchedulerName::Ddim),
            "lcm" => Ok(SchedulerName::Lcm),
            "flow-match-euler" | "flowmatch-euler" | "flow-match" => Ok(SchedulerName::FlowMatchEuler),
            _ => Err(Error::param("scheduler", s, "one of dpm-solver++, ddim, lcm, flow-match-euler")),
        }
    }
}

impl SchedulerName {
    /// The name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerName::DpmSolverPP => "dpm-solver++",
            SchedulerName::Ddim => "ddim",
            SchedulerName::Lcm => "lcm",
            SchedulerName::FlowMatchEuler => "flow-match-euler",
        }
    }

    /// The diffusers class of this solver.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerName::DpmSolverPP => "DPMSolverMultistepScheduler",
            SchedulerName::Ddim => "DDIMScheduler",
            SchedulerName::Lcm => "LCMScheduler",
            SchedulerName::FlowMatchEuler => "FlowMatchEulerDiscreteScheduler",
        }
    }

    /// The solver of a diffusers scheduler class.
    pub fn from_class_name(class: &str) -> Option<Self> {
        [SchedulerName::DpmSolverPP, SchedulerName::Ddim, SchedulerName::Lcm, SchedulerName::FlowMatchEuler]
            .into_iter()
            .find(|s| s.class_name() == class)
    }
}

/// A diffusers `scheduler_config.json`: the flow-matching parameters, and a check that the
/// DDPM-family solvers' training schedule is the one this runtime implements (linear betas
/// 1e-4..0.02 over 1000 steps, ε prediction): a config asking for another is an error that names
/// the key, never a silently different schedule.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// `_class_name`, when the file has one
    pub class_name: Option<String>,
    /// the flow-matching parameters (defaults when the file is another scheduler's)
    pub flow_match: FlowMatchConfig,
    /// the file's JSON (checked against a solver by [`Scheduler::with_config`])
    raw: Option<Value>,
}

impl SchedulerConfig {
    /// Reads a `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::Config { key, msg, .. } => Error::Config { path: path.to_path_buf(), key, msg },
            other => other,
        })
    }

    /// Parses the text of a `scheduler_config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Config {
            path: "scheduler_config.json".into(),
            key: None,
            msg: format!("not JSON: {e}"),
        })?;
        let class_name = v.get("_class_name").and_then(Value::as_str).map(str::to_string);
        let flow_match = if class_name.as_deref() == Some(SchedulerName::FlowMatchEuler.class_name()) {
            FlowMatchConfig::from_json(&v)?
        } else {
            FlowMatchConfig::default()
        };
        Ok(SchedulerConfig { class_name, flow_match, raw: Some(v) })
    }

    /// The solver the file names, if it is one of this runtime's.
    pub fn solver(&self) -> Option<SchedulerName> {
        self.class_name.as_deref().and_then(SchedulerName::from_class_name)
    }

    /// Checks that a DDPM-family solver can honour the file's training schedule.
    fn check_ddpm(&self) -> Result<()> {
        let Some(v) = &self.raw else { return Ok(()) };
        let err =
            |k: &str, msg: String| Error::Config { path: "scheduler_config.json".into(), key: Some(k.into()), msg };
        let num = |k: &str, want: f64| -> Result<()> {
            match v.get(k).filter(|x| !x.is_null()) {
                Some(x) if x.as_f64().is_none_or(|f| (f - want).abs() > want.abs() * 1e-6) => {
                    Err(err(k, format!("{x} is not supported (this runtime's solvers use {want})")))
                }
                _ => Ok(()),
            }
        };
        num("beta_start", schedule::BETA_START as f64)?;
        num("beta_end", schedule::BETA_END as f64)?;
        num("num_train_timesteps", schedule::NUM_TRAIN_TIMESTEPS as f64)?;
        for (k, want) in [("beta_schedule", "linear"), ("prediction_type", "epsilon")] {
            match v.get(k).filter(|x| !x.is_null()) {
                Some(x) if x.as_str() != Some(want) => {
                    return Err(err(k, format!("{x} is not supported (only \"{want}\")")));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A solver set up for a number of steps: its timesteps and per-step update coefficients.
pub struct Scheduler(Solver);

enum Solver {
    Dpm(dpm_solver::DpmSolver),
    Ddim(ddim::Ddim),
    Lcm(lcm::Lcm),
    Flow(flow_match::FlowMatch),
}

impl Scheduler {
    /// `name` for `steps` steps with diffusers' default config (1..=1000; LCM 1..=50).
    pub fn new(name: SchedulerName, steps: usize) -> Result<Self> {
        Self::with_config(name, steps, &SchedulerConfig::default(), 0)
    }

    /// `name` for `steps` steps with the parameters of `cfg` (a `scheduler_config.json`);
    /// `image_seq_len`: image tokens per sample (μ of dynamically shifted flow matching).
    pub fn with_config(name: SchedulerName, steps: usize, cfg: &SchedulerConfig, image_seq_len: usize) -> Result<Self> {
        let ddpm = match name {
            SchedulerName::FlowMatchEuler => {
                return Ok(Scheduler(Solver::Flow(flow_match::FlowMatch::new(&cfg.flow_match, steps, image_seq_len)?)))
            }
            other => other,
        };
        cfg.check_ddpm()?;
        if steps == 0 || steps > schedule::NUM_TRAIN_TIMESTEPS {
            return Err(Error::param("steps", steps, format!("1..={}", schedule::NUM_TRAIN_TIMESTEPS)));
        }
        if ddpm == SchedulerName::Lcm && steps > lcm::ORIGINAL_INFERENCE_STEPS {
            return Err(Error::param(
                "steps",
                steps,
                format!("1..={} for lcm (its original inference steps)", lcm::ORIGINAL_INFERENCE_STEPS),
            ));
        }
        Ok(Scheduler(match ddpm {
            SchedulerName::Ddim => Solver::Ddim(ddim::Ddim::new(steps)),
            SchedulerName::Lcm => Solver::Lcm(lcm::Lcm::new(steps)),
            _ => Solver::Dpm(dpm_solver::DpmSolver::new(steps)),
        }))
    }

    /// FluxPipeline's flow-matching schedule: σ = linspace(1, 1/n, n) handed to `set_timesteps`.
    pub fn flow_match_linear(steps: usize, cfg: &FlowMatchConfig, image_seq_len: usize) -> Result<Self> {
        Ok(Scheduler(Solver::Flow(flow_match::FlowMatch::with_linear_sigmas(cfg, steps, image_seq_len)?)))
    }

    /// The timesteps of the steps, in order (as diffusers' `scheduler.timesteps`).
    pub fn timesteps(&self) -> Vec<f32> {
        let ints = |t: &[i64]| t.iter().map(|&v| v as f32).collect();
        match &self.0 {
            Solver::Dpm(s) => ints(&s.timesteps),
            Solver::Ddim(s) => ints(&s.timesteps),
            Solver::Lcm(s) => ints(&s.timesteps),
            Solver::Flow(s) => s.timesteps.clone(),
        }
    }

    /// Flow matching: σ of every step and a final 0 (as the scheduler's `sigmas`).
    pub fn sigmas(&self) -> Option<&[f32]> {
        match &self.0 {
            Solver::Flow(s) => Some(&s.sigmas),
            _ => None,
        }
    }

    /// The fused update of step `i` ([`crate::Backend::scheduler_step`]).
    pub fn update(&self, i: usize) -> SchedulerUpdate {
        match &self.0 {
            Solver::Dpm(s) => s.update(i),
            Solver::Ddim(s) => s.update(i),
            Solver::Lcm(s) => s.update(i),
            Solver::Flow(s) => s.update(i),
        }
    }

    /// DPM-Solver++ 2M keeps the previous x0.
    pub fn needs_x0_prev(&self) -> bool {
        matches!(self.0, Solver::Dpm(_))
    }

    /// LCM injects noise after every step but the last.
    pub fn needs_noise(&self, i: usize) -> bool {
        match &self.0 {
            Solver::Lcm(s) => s.needs_noise(i),
            _ => false,
        }
    }
}
