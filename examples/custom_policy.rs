//! A cache policy of one's own: reuse the rear half of the blocks' deviation on every other step
//! in the first half of the run, and run everything in the second half. The engine checks each
//! plan against what the policy declares in `needs()`.
//!
//! ```sh
//! cargo run --release --example custom_policy -- tests/data/pixart-tiny-delta-n2-nc4-b12
//! ```

use deltadit::backend::cpu::Cpu;
use deltadit::cache::{CacheNeeds, CachePolicy, StepInfo, StepPlan};
use deltadit::io::Inputs;
use deltadit::model::Transformer;
use deltadit::pipeline::{sample, SampleConfig, SampleInputs};
use deltadit::sampler::SchedulerName;
use std::path::PathBuf;
use std::process::ExitCode;

/// Skips the rear `n` blocks on odd steps of the first half, with Δ_rear from the step before.
#[derive(Debug)]
struct RearEveryOtherStep {
    n: usize,
}

impl CachePolicy for RearEveryOtherStep {
    fn name(&self) -> &'static str {
        "rear-every-other-step"
    }

    fn params(&self) -> String {
        format!("n={}", self.n)
    }

    fn needs(&self) -> CacheNeeds {
        CacheNeeds { rear: Some(self.n), ..Default::default() }
    }

    fn plan(&mut self, info: &StepInfo) -> StepPlan {
        let early = info.step < info.steps / 2;
        if early && info.step % 2 == 1 {
            StepPlan::CachedRear(self.n)
        } else {
            // Store Δ_rear when the next step will read it.
            let next_reads = early && info.step + 1 < info.steps / 2;
            StepPlan::Full { store_front: false, store_rear: next_reads, store_branches: false, store_rest: false }
        }
    }
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: custom_policy MODEL_DIR (with inputs.safetensors)");
        return ExitCode::from(2);
    };
    match run(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &std::path::Path) -> deltadit::Result<()> {
    let be = Cpu::default();
    let model = Transformer::load(&be, dir)?;
    let inputs = SampleInputs::from_inputs(&Inputs::open(&dir.join("inputs.safetensors"))?, model.config())?;
    let cfg = SampleConfig::new(SchedulerName::DpmSolverPP, 10, 4.5);
    let policy = RearEveryOtherStep { n: model.num_blocks() / 2 };
    let out = sample(&be, &model, &inputs, &cfg, Box::new(policy), &mut |_, _| {})?;
    for (i, (plan, blocks)) in out.plans.iter().zip(&out.blocks_run).enumerate() {
        println!("step {i:>2}: {:<16} {blocks} blocks", plan.variant());
    }
    println!("{} of {} block evaluations", out.blocks_run.iter().sum::<usize>(), cfg.steps * model.num_blocks());

    // A policy that reads a deviation no step stored is an error, not a wrong image.
    #[derive(Debug)]
    struct Broken;
    impl CachePolicy for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn params(&self) -> String {
            String::new()
        }
        fn needs(&self) -> CacheNeeds {
            CacheNeeds { rear: Some(2), ..Default::default() }
        }
        fn plan(&mut self, _: &StepInfo) -> StepPlan {
            StepPlan::CachedRear(2)
        }
    }
    match sample(&be, &model, &inputs, &cfg, Box::new(Broken), &mut |_, _| {}) {
        Err(e) => println!("a broken policy is rejected: {e}"),
        Ok(_) => return Err(deltadit::Error::param("policy", "broken", "to be rejected")),
    }
    Ok(())
}
