//! `deltadit calibrate`: the speed/quality frontier of the cache policies on one model. Defaults
//! do not transfer between models (the probe scales of the adaptive policies, which stage of the
//! network tolerates caching, …), so the tool sweeps each policy's settings on a few seeds,
//! beside the fewer-steps baseline at the same compute, and names the cheapest setting that keeps
//! a target quality.

use super::{bench_inputs, kit::images, kit::quality, measure, BenchOptions, ModelKit, Quality};
use crate::cache::{schedule, CacheSpec, Schedule};
use crate::model::Transformer;
use crate::sampler::SchedulerName;
use crate::{Backend, Error, Result};
use serde::Serialize;

/// What to sweep on.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    pub scheduler: SchedulerName,
    pub steps: usize,
    pub guidance: f32,
    pub latent: (usize, usize),
    pub text_len: usize,
    /// images (seeds) each setting samples
    pub images: usize,
    pub seed: u64,
    /// the mean PSNR (dB, against the uncached run) a setting must keep
    pub target_psnr: Option<f64>,
    /// the most compute (block evaluations relative to the uncached run) a setting may take
    pub budget: Option<f64>,
    /// timed runs per setting (after none for warm-up: the uncached reference warms the caches)
    pub runs: usize,
    /// the scheduler's parameters
    pub scheduler_config: crate::sampler::SchedulerConfig,
}

/// One swept setting, measured.
#[derive(Clone, Debug, Serialize)]
pub struct Setting {
    /// `delta`, `delta-adaptive`, `first-block`, `fora`, `schedule` or `fewer-steps`
    pub kind: String,
    /// the `--cache` spec (for fewer-steps: `none` at `steps`)
    pub spec: String,
    /// solver steps
    pub steps: usize,
    /// block evaluations relative to the uncached run at the full step count
    pub compute: f64,
    /// median sampling time, seconds
    pub time_s: f64,
    /// time(uncached) / time(setting)
    pub speedup: f64,
    /// mean PSNR against the uncached run (per image for pixel-space models with prompts or
    /// classes, else over the final latents), dB
    pub psnr: f64,
    /// per-image quality, where the model's samples are images
    pub quality: Option<Quality>,
    /// on the frontier: no other setting is as cheap and at least as good
    pub frontier: bool,
    /// the policy's shipped default (its spec without parameters: `delta`, `fora`, …)
    pub default: bool,
}

/// The specs swept for a model of `layers` blocks sampled in `steps` steps.
pub fn sweep(layers: usize, steps: usize) -> Vec<(String, String, usize)> {
    let mut v: Vec<(String, String, usize)> = Vec::new();
    let mut push = |kind: &str, spec: String, s: usize| {
        if !v.iter().any(|(_, x, t)| *x == spec && *t == s) {
            v.push((kind.to_string(), spec, s));
        }
    };
    let frac = |f: f64, n: usize| ((n as f64 * f).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    // the shipped defaults (presets for the model and step count), measured as such
    for kind in ["delta", "delta-adaptive", "first-block", "fora"] {
        push(kind, kind.to_string(), steps);
    }
    for n in [2, 3, 4] {
        for nc in [frac(0.25, layers), frac(0.5, layers), frac(0.75, layers)] {
            for b in [0, steps / 4, steps / 2, 3 * steps / 4, steps] {
                push("delta", format!("delta:n={n},nc={nc},b={b}"), steps);
                // Reversed stages; b = 0 and b = steps are the paper's b = steps and b = 0.
                if b != 0 && b != steps {
                    push("delta", format!("delta:n={n},nc={nc},b={b},order=reverse"), steps);
                }
            }
        }
    }
    for threshold in [0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6] {
        for warmup in [1, 2] {
            for max_cached in [1, 2, 3] {
                push(
                    "delta-adaptive",
                    format!("delta-adaptive:threshold={threshold},warmup={warmup},max-cached={max_cached}"),
                    steps,
                );
            }
        }
    }
    for threshold in [0.02, 0.05, 0.1, 0.2, 0.4, 0.8] {
        push("first-block", format!("first-block:threshold={threshold}"), steps);
        for max_cached in [1, 2, 3] {
            push("first-block", format!("first-block:threshold={threshold},max-cached={max_cached}"), steps);
        }
    }
    for n in [2, 3, 4, 5] {
        push("fora", format!("fora:n={n}"), steps);
    }
    for f in [0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95] {
        let k = ((steps as f64 * f).round() as usize).clamp(1, steps);
        if k < steps {
            push("fewer-steps", "none".into(), k);
        }
    }
    v
}

/// The numbers of full steps the searched schedules are chosen for: 30% … 90% of `steps`, at
/// least 2 and fewer than `steps`.
pub fn schedule_full_steps(steps: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9]
        .iter()
        .map(|f| (steps as f64 * f).round() as usize)
        .filter(|&k| k >= 2 && k < steps)
        .collect();
    v.dedup();
    v
}

/// Mean squared difference of two equally long slices.
fn mse(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>() / a.len().max(1) as f64
}

/// Measures every setting of `sweep` (and the uncached reference), then searches schedules
/// (`schedule:mask=…`): the error of every edge of the step DAG alone (the final latents' mean
/// squared difference from the uncached run when only the steps between full steps i and j are
/// cached), and for each number of full steps of `schedule_full_steps` (30–90% of the steps) the mask of least summed
/// edge error ([`schedule::best_path`]); marks the frontier.
pub fn calibrate<B: Backend>(
    be: &B,
    model: &Transformer<B>,
    kit: Option<&ModelKit>,
    opts: &CalibrateOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Setting>> {
    let cfg = model.config();
    let layers = model.num_blocks();
    let settings = sweep(layers, opts.steps);
    let bench = BenchOptions {
        policies: Vec::new(),
        scheduler: opts.scheduler,
        steps: opts.steps,
        guidance: opts.guidance,
        latent: opts.latent,
        text_len: opts.text_len,
        warmup: 0,
        runs: opts.runs.max(1),
        seed: opts.seed,
        images: opts.images,
        fewer_steps: false,
        baseline_steps: Vec::new(),
        scheduler_config: opts.scheduler_config.clone(),
    };
    let judged = kit.is_some_and(|k| k.judges_images());
    let classifier = kit.and_then(|k| k.classifier.as_ref());
    let edges = if opts.steps >= 3 { opts.steps * (opts.steps - 1) / 2 - (opts.steps - 1) } else { 0 };
    let total = ((settings.len() + 2 + schedule_full_steps(opts.steps).len()) * opts.runs.max(1) + edges) * opts.steps;
    let mut done = 0;
    let mut tick = |k: usize| {
        done += k;
        progress(done, total);
    };
    let runs = (0, opts.runs.max(1));
    let sc = bench.sample_config(opts.steps);
    sc.validate()?;
    let (inputs, asked) = bench_inputs(cfg, kit, &bench, opts.steps)?;
    // The uncached reference, run once first to warm up.
    measure(be, model, &inputs, &CacheSpec::none(), &sc, (0, 1), &mut tick)?;
    let (t_none, _, reference, _) = measure(be, model, &inputs, &CacheSpec::none(), &sc, runs, &mut tick)?;
    let reference_images = images(cfg, &reference.latents, &reference.shape, opts.latent)?.0;
    let full = (opts.steps * layers) as f64;
    let mut out = Vec::with_capacity(settings.len());
    // One setting measured: its spec at `steps` steps, judged against the uncached reference.
    let one = |kind: String, spec: String, steps: usize, tick: &mut dyn FnMut(usize)| -> Result<Option<Setting>> {
        let parsed: CacheSpec = spec.parse()?;
        let sck = bench.sample_config(steps);
        let fresh;
        let inp = if steps == opts.steps {
            &inputs
        } else {
            fresh = bench_inputs(cfg, kit, &bench, steps)?.0;
            &fresh
        };
        let (time_s, _, o, params) = match measure(be, model, inp, &parsed, &sck, runs, tick) {
            Ok(m) => m,
            // A setting the model's depth or step count rules out (e.g. b > steps) is skipped.
            Err(Error::Param { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let blocks: usize = o.blocks_run.iter().sum();
        let q = if judged {
            let (img, shape) = images(cfg, &o.latents, &o.shape, opts.latent)?;
            Some(quality(&img, &reference_images, shape, classifier, &asked)?)
        } else {
            None
        };
        let psnr = q.map_or_else(|| super::psnr(&o.latents, &reference.latents), |q| q.psnr_mean);
        let default = spec == kind;
        let spec = if kind == "fewer-steps" {
            format!("none, {steps} steps")
        } else if params.is_empty() {
            parsed.to_string()
        } else {
            format!("{}:{params}", parsed.policy())
        };
        Ok(Some(Setting {
            kind,
            spec,
            steps,
            compute: blocks as f64 / full,
            time_s,
            speedup: t_none / time_s,
            psnr,
            quality: q,
            frontier: false,
            default,
        }))
    };
    for (kind, spec, steps) in settings {
        out.extend(one(kind, spec, steps, &mut tick)?);
    }
    // Searched schedules (LeMiCa): the error each edge (full step i → next full step j, the steps
    // between cached) causes alone, then per budget the path of least summed error.
    if opts.steps >= 3 {
        let s = opts.steps;
        let mut cost = vec![vec![0.0f64; s]; s];
        for (i, j) in schedule::edges(s).into_iter().filter(|&(i, j)| j > i + 1) {
            let mask: Vec<bool> = (0..s).map(|k| k <= i || k >= j).collect();
            let spec: CacheSpec = format!("schedule:mask={}", Schedule::bits(&mask)).parse()?;
            let (_, _, o, _) = measure(be, model, &inputs, &spec, &sc, (0, 1), &mut tick)?;
            cost[i][j] = mse(&o.latents, &reference.latents);
        }
        let mut seen = Vec::new();
        for full in schedule_full_steps(s) {
            if let Some((path, _)) = schedule::best_path(s, full, &|i, j| cost[i][j]) {
                let spec = format!("schedule:mask={}", Schedule::bits(&Schedule::mask_of(&path, s)));
                if !seen.contains(&spec) {
                    seen.push(spec.clone());
                    out.extend(one("schedule".into(), spec, s, &mut tick)?);
                }
            }
        }
    }
    mark_frontier(&mut out);
    Ok(out)
}

/// A setting is on the frontier when it saves compute and no other is at most as costly
/// (compute) and at least as good (PSNR) and strictly better in one of the two; of settings that
/// tie in both (the same plans), the first listed stands for them.
fn mark_frontier(settings: &mut [Setting]) {
    let snapshot: Vec<(f64, f64)> = settings.iter().map(|s| (s.compute, s.psnr)).collect();
    for (i, s) in settings.iter_mut().enumerate() {
        let (c, p) = snapshot[i];
        let dominated = snapshot
            .iter()
            .enumerate()
            .any(|(j, &(c2, p2))| j != i && c2 <= c && p2 >= p && (c2 < c || p2 > p || (j < i && c2 == c && p2 == p)));
        s.frontier = c < 1.0 - 1e-9 && !dominated;
    }
}

/// The frontier table, and the choices the options ask for.
pub fn format_frontier(settings: &[Setting], opts: &CalibrateOptions) -> String {
    let mut s = format!(
        "{} settings swept on {} image(s), {} steps; compute = block evaluations relative to the uncached run\n",
        settings.len(),
        opts.images,
        opts.steps
    );
    let mut front: Vec<&Setting> = settings.iter().filter(|x| x.frontier).collect();
    front.sort_by(|a, b| a.compute.total_cmp(&b.compute));
    // the spec column as wide as the longest spec: every row stays in line
    let w = settings.iter().map(|x| x.spec.chars().count()).chain([7]).max().unwrap_or(7);
    s += &format!(
        "{:<16} {:<w$} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "frontier", "setting", "steps", "compute", "speedup", "PSNR dB", "worst dB", "acc %"
    );
    let row = |x: &Setting| {
        format!(
            "{:<16} {:<w$} {:>5} {:>8.1}% {:>8.2}× {:>9.1} {:>9} {:>7}\n",
            x.kind,
            x.spec,
            x.steps,
            100.0 * x.compute,
            x.speedup,
            x.psnr,
            x.quality.map_or_else(|| "-".into(), |q| format!("{:.1}", q.psnr_worst)),
            x.quality.and_then(|q| q.accuracy).map_or_else(|| "-".into(), |a| format!("{:.1}", 100.0 * a)),
        )
    };
    for x in &front {
        s += &row(x);
    }
    // Per kind: its best setting at each kind's own frontier, so a reader sees where caching loses
    // to fewer steps.
    s += "best of each kind (highest PSNR at ≤ 80% compute):\n";
    for kind in ["delta", "delta-adaptive", "first-block", "fora", "schedule", "fewer-steps"] {
        let best = settings
            .iter()
            .filter(|x| x.kind == kind && x.compute <= 0.8)
            .max_by(|a, b| a.psnr.total_cmp(&b.psnr).then(b.compute.total_cmp(&a.compute)));
        if let Some(b) = best {
            s += &row(b);
        }
    }
    let choice = Calibration::new(settings, opts);
    if let Some(t) = opts.target_psnr {
        s += &match choice.cheapest_over_target {
            Some(x) => format!("cheapest setting with PSNR ≥ {t} dB:\n{}", row(x)),
            None => format!("no setting keeps PSNR ≥ {t} dB\n"),
        };
    }
    if let Some(b) = opts.budget {
        s += &match choice.best_within_budget {
            Some(x) => format!("best setting within {:.0}% compute:\n{}", 100.0 * b, row(x)),
            None => format!("no setting within {:.0}% compute\n", 100.0 * b),
        };
    }
    s
}

/// What `calibrate` found (its JSON): every setting, and the choices the options asked for.
#[derive(Debug, Serialize)]
pub struct Calibration<'a> {
    pub settings: &'a [Setting],
    pub target_psnr: Option<f64>,
    /// the cheapest setting (compute, then time) whose mean PSNR is at least `target_psnr`
    pub cheapest_over_target: Option<&'a Setting>,
    pub budget: Option<f64>,
    /// the setting of highest mean PSNR within `budget` compute
    pub best_within_budget: Option<&'a Setting>,
}

impl<'a> Calibration<'a> {
    /// The choices of `opts` among `settings`.
    pub fn new(settings: &'a [Setting], opts: &CalibrateOptions) -> Self {
        let cheapest_over_target = opts.target_psnr.and_then(|t| {
            settings
                .iter()
                .filter(|x| x.psnr >= t)
                .min_by(|a, b| a.compute.total_cmp(&b.compute).then(a.time_s.total_cmp(&b.time_s)))
        });
        let best_within_budget = opts
            .budget
            .and_then(|b| settings.iter().filter(|x| x.compute <= b).max_by(|a, b| a.psnr.total_cmp(&b.psnr)));
        Calibration {
            settings,
            target_psnr: opts.target_psnr,
            cheapest_over_target,
            budget: opts.budget,
            best_within_budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_covers_each_kind_once_per_setting() {
        let v = sweep(12, 20);
        // (the searched schedules are chosen after the sweep, from measured edge errors)
        for kind in ["delta", "delta-adaptive", "first-block", "fora", "fewer-steps"] {
            assert!(v.iter().any(|(k, _, _)| k == kind), "{kind}");
            assert!(kind == "fewer-steps" || v.iter().any(|(k, s, _)| k == kind && s == kind), "{kind}'s default");
        }
        assert_eq!(schedule_full_steps(20), [6, 8, 10, 11, 12, 13, 14, 16, 18]);
        assert_eq!(schedule_full_steps(3), [2]);
        assert!(v.iter().any(|(_, s, _)| s.ends_with("order=reverse")));
        let mut keys: Vec<_> = v.iter().map(|(_, s, t)| (s.clone(), *t)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), v.len(), "a setting listed twice");
        for (_, s, _) in &v {
            assert!(s.parse::<CacheSpec>().is_ok(), "{s}");
        }
    }

    #[test]
    fn frontier_keeps_the_undominated() {
        let mk = |c: f64, p: f64| Setting {
            kind: "x".into(),
            spec: String::new(),
            steps: 1,
            compute: c,
            time_s: c,
            speedup: 1.0 / c,
            psnr: p,
            quality: None,
            frontier: false,
            default: false,
        };
        let mut v = vec![
            mk(0.5, 30.0),
            mk(0.6, 29.0),
            mk(0.7, 40.0),
            mk(0.5, 25.0),
            mk(0.9, 40.0),
            mk(0.7, 40.0),
            mk(1.0, 100.0),
        ];
        mark_frontier(&mut v);
        let f: Vec<bool> = v.iter().map(|s| s.frontier).collect();
        assert_eq!(f, [true, false, true, false, false, false, false]);
    }
}
