//! Schedulers: timesteps and the per-step coefficients of the fused update
//! ([`crate::Backend::scheduler_step`]). The latents never leave the backend.

pub mod ddim;
pub mod dpm_solver;
pub mod lcm;
pub mod schedule;

use crate::backend::SchedulerUpdate;
use crate::{Error, Result};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerName {
    DpmSolverPP,
    Ddim,
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
    pub fn name(self) -> &'static str {
        match self {
            SchedulerName::DpmSolverPP => "dpm-solver++",
            SchedulerName::Ddim => "ddim",
            SchedulerName::Lcm => "lcm",
        }
    }
}

pub enum Scheduler {
    Dpm(dpm_solver::DpmSolver),
    Ddim(ddim::Ddim),
    Lcm(lcm::Lcm),
}

impl Scheduler {
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
        Ok(match name {
            SchedulerName::DpmSolverPP => Scheduler::Dpm(dpm_solver::DpmSolver::new(steps)),
            SchedulerName::Ddim => Scheduler::Ddim(ddim::Ddim::new(steps)),
            SchedulerName::Lcm => Scheduler::Lcm(lcm::Lcm::new(steps)),
        })
    }

    pub fn timesteps(&self) -> &[i64] {
        match self {
            Scheduler::Dpm(s) => &s.timesteps,
            Scheduler::Ddim(s) => &s.timesteps,
            Scheduler::Lcm(s) => &s.timesteps,
        }
    }

    pub fn update(&self, i: usize) -> SchedulerUpdate {
        match self {
            Scheduler::Dpm(s) => s.update(i),
            Scheduler::Ddim(s) => s.update(i),
            Scheduler::Lcm(s) => s.update(i),
        }
    }

    /// DPM-Solver++ 2M keeps the previous x0.
    pub fn needs_x0_prev(&self) -> bool {
        matches!(self, Scheduler::Dpm(_))
    }

    /// LCM injects noise after every step but the last.
    pub fn needs_noise(&self, i: usize) -> bool {
        match self {
            Scheduler::Lcm(s) => s.needs_noise(i),
            _ => false,
        }
    }
}
