//! Schedulers: timesteps and the per-step coefficients of the fused update
//! ([`crate::Backend::scheduler_step`]). The latents never leave the backend.

mod ddim;
mod dpm_solver;
mod lcm;
#[allow(missing_docs)]
pub(crate) mod schedule;

use crate::backend::SchedulerUpdate;
use crate::{Error, Result};
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
}

impl FromStr for SchedulerName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dpm-solver++" | "dpmsolver++" | "dpm" => Ok(SchedulerName::DpmSolverPP),
            "ddim" => Ok(SchedulerName::Ddim),
            "lcm" => Ok(SchedulerName::Lcm),
            _ => Err(Error::param("scheduler", s, "one of dpm-solver++, ddim, lcm")),
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
        }
    }
}

/// A solver set up for a number of steps: its timesteps and per-step update coefficients.
pub struct Scheduler(Solver);

enum Solver {
    Dpm(dpm_solver::DpmSolver),
    Ddim(ddim::Ddim),
    Lcm(lcm::Lcm),
}

impl Scheduler {
    /// `name` for `steps` steps (1..=1000; LCM 1..=50).
    pub fn new(name: SchedulerName, steps: usize) -> Result<Self> {
        if steps == 0 || steps > schedule::NUM_TRAIN_TIMESTEPS {
            return Err(Error::param("steps", steps, format!("1..={}", schedule::NUM_TRAIN_TIMESTEPS)));
        }
        if name == SchedulerName::Lcm && steps > lcm::ORIGINAL_INFERENCE_STEPS {
            return Err(Error::param(
                "steps",
                steps,
                format!("1..={} for lcm (its original inference steps)", lcm::ORIGINAL_INFERENCE_STEPS),
            ));
        }
        Ok(Scheduler(match name {
            SchedulerName::DpmSolverPP => Solver::Dpm(dpm_solver::DpmSolver::new(steps)),
            SchedulerName::Ddim => Solver::Ddim(ddim::Ddim::new(steps)),
            SchedulerName::Lcm => Solver::Lcm(lcm::Lcm::new(steps)),
        }))
    }

    /// The timesteps of the steps, in order (as diffusers' `scheduler.timesteps`).
    pub fn timesteps(&self) -> &[i64] {
        match &self.0 {
            Solver::Dpm(s) => &s.timesteps,
            Solver::Ddim(s) => &s.timesteps,
            Solver::Lcm(s) => &s.timesteps,
        }
    }

    /// The fused update of step `i` ([`crate::Backend::scheduler_step`]).
    pub fn update(&self, i: usize) -> SchedulerUpdate {
        match &self.0 {
            Solver::Dpm(s) => s.update(i),
            Solver::Ddim(s) => s.update(i),
            Solver::Lcm(s) => s.update(i),
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
