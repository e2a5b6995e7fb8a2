//! Whole-model benchmarks of a preset with random weights and classifier-free guidance (batch 2;
//! FLUX: batch 1, the guidance scale embedded as FluxPipeline runs it):
//!
//!   forward/<preset>         one transformer forward (embed, all blocks, final layer)
//!   forward-wgmma/<preset>   the same with the wgmma attention kernel (GPUs with sm_90a), and
//!                            its output's relative L2 distance to the default kernel's
//!   step/<preset>            one full sampling step as the pipeline runs it: latents into the
//!                            CFG batch, timestep, embed + blocks + final layer + CFG combine
//!                            (the pipeline's two graph units on CUDA), scheduler update, sync
//!   sample20-none/<preset>   20 sampling steps without a cache (sum of the step times, as
//!   sample20-delta/<preset>  `deltadit bench` counts) and with Δ-DiT (`delta`, the paper's preset)
//!
//!   cargo bench --bench step [-- --quick] [FILTER]
//!
//! GPU: pixart-alpha-1024 and sd35-medium-1024 (quick) or also dit-xl-2-256, pixart-alpha-512,
//! dit-xl-2-512, sd3-medium-1024, sd35-large-1024, flux-dev-1024 (full); CPU: pixart-cpu-small,
//! sd35-cpu-small and flux-cpu-small (+ dit-cpu-small in full mode). Wall clock with a device synchronisation at the
//! end of each forward/step/run (what a caller sees). Writes <out>/step-<backend>.json.

mod common;

use common::{median, min, Mode, Timed};
use deltadit::backend::AttentionKernel;
use deltadit::backend::Cfg;
use deltadit::cache::CacheSpec;
use deltadit::internals::bench::{model_grid, random_inputs, Preset};
use deltadit::internals::{ModelParts, WorkspaceParts};
use deltadit::model::Family;
use deltadit::pipeline::{sample, Denoiser, SampleConfig};
use deltadit::sampler::Scheduler;
use deltadit::{DType, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Row {
    name: String,
    kind: String,
    preset: String,
    /// the model batch (2: the CFG batch; FLUX 1)
    batch: usize,
    samples: Vec<f64>,
    extra: Value,
}

/// Runs `f(iters)` (returns seconds for `iters` repetitions) as criterion bench `group/preset`,
/// keeping the per-repetition samples.
fn bench(
    c: &mut criterion::Criterion,
    group: &str,
    preset: &str,
    f: &mut dyn FnMut(u64) -> Result<f64>,
) -> Result<Vec<f64>> {
    let mut samples = Vec::new();
    let mut failed = None;
    {
        let mut g = c.benchmark_group(group);
        g.bench_function(preset, |b| {
            b.iter_custom(|iters| {
                if failed.is_some() {
                    return Duration::from_nanos(iters);
                }
                match f(iters) {
                    Ok(s) => {
                        samples.push(s / iters as f64);
                        Duration::from_secs_f64(s)
                    }
                    Err(e) => {
                        failed = Some(e);
                        Duration::from_nanos(iters)
                    }
                }
            })
        });
        g.finish();
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(samples),
    }
}

/// The rows of one preset. `extra_kernels`: instead, only `forward-<kernel>/<preset>` for each of
/// the backend's extra attention kernels (a second pass, after every preset's default rows: a
/// kernel never run on this hardware before cannot take the others' rows with it).
fn preset_rows<B: Timed>(
    be: &B,
    mode: &Mode,
    c: &mut criterion::Criterion,
    p: &Preset,
    extra_kernels: bool,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let steps = 20;
    let t0 = Instant::now();
    let model = p.build(be, 0)?;
    let build_s = t0.elapsed().as_secs_f64();
    let cfg = model.config();
    let family = cfg.family;
    let layers = model.num_blocks();
    let inputs = random_inputs(cfg, p.latent, p.latent, p.text_len, steps, 0);
    // FluxPipeline: no CFG batch, the guidance scale embedded (dev)
    let flux = family == Family::Flux;
    let batch = if flux { 1 } else { 2 };
    let mut cond = inputs.conditioning(family, cfg.num_embeds_ada_norm, !flux)?;
    if flux && cfg.guidance_embeds {
        cond.guidance = Some(vec![p.guidance; batch]);
    }
    let ctx = model.context(be, &cond)?;
    let mut ws = model.workspace(be, &ctx)?;
    let guidance = if flux { Cfg::Off } else { Cfg::On { scale: p.guidance, cond_first: family.cond_first() } };
    let numel: usize = inputs.shape.iter().product();
    let model_in: Vec<f32> = inputs.latents.repeat(batch);
    let name = |k: &str| format!("{k}/{}", p.name);
    let (gh, gw) = model_grid(cfg, (p.latent, p.latent));
    let tokens = (gh / cfg.patch_size) * (gw / cfg.patch_size);
    println!("{}: model built in {build_s:.1} s ({layers} blocks, {tokens} tokens, batch {batch})", p.name);

    // One forward.
    if mode.wants(&name("forward")) || (extra_kernels && mode.wants("forward-")) {
        be.write(ws.input_mut(), &model_in)?;
        be.write(ws.timesteps_mut(), &vec![500.0; batch])?;
        let fwd = |ws: &mut deltadit::model::Workspace<B>, key: &str| -> Result<()> {
            be.graph_run(key, &mut || {
                model.embed_step(be, &ctx, ws)?;
                model.run_block_range(be, &ctx, ws, 0..layers)?;
                model.finish_step(be, ws)
            })?;
            be.synchronize()
        };
        let mut timed = |ws: &mut deltadit::model::Workspace<B>, kind: &str| -> Result<Vec<f64>> {
            let key = format!("bench/{kind}");
            for _ in 0..3 {
                fwd(ws, &key)?; // warm-up, graph capture
            }
            bench(c, kind, p.name, &mut |iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    fwd(ws, &key)?;
                }
                Ok(t.elapsed().as_secs_f64())
            })
        };
        if !extra_kernels {
            let samples = timed(&mut ws, "forward")?;
            rows.push(Row {
                name: name("forward"),
                kind: "forward".into(),
                preset: p.name.into(),
                batch,
                samples,
                extra: json!({}),
            });
        } else {
            // The same forward with each extra attention kernel; its output against the default's.
            fwd(&mut ws, "bench/forward")?;
            let reference = be.download(ws.output())?;
            for k in be.extra_attention_kernels() {
                if k == AttentionKernel::default() {
                    continue;
                }
                let kind = format!("forward-{k}");
                be.use_attention_kernel(k)?;
                let r = timed(&mut ws, &kind).and_then(|s| Ok((s, be.download(ws.output())?)));
                be.use_attention_kernel(AttentionKernel::default())?;
                let (samples, out) = r?;
                let rel = deltadit::internals::rel_l2(&out, &reference);
                println!("{kind}/{}: output vs the default attention kernel's: rel L2 {rel:.2e}", p.name);
                rows.push(Row {
                    name: name(&kind),
                    kind,
                    preset: p.name.into(),
                    batch,
                    samples,
                    extra: json!({ "rel_l2_vs_default_attention": rel }),
                });
            }
        }
    }

    if extra_kernels {
        return Ok(());
    }

    // One sampling step with CFG, as the pipeline runs it (policy none: every step is full).
    if mode.wants(&name("step")) {
        let sched = if flux {
            Scheduler::flow_match_linear(steps, &p.scheduler_config().flow_match, tokens)?
        } else {
            Scheduler::with_config(p.scheduler, steps, &p.scheduler_config(), tokens)?
        };
        let timesteps = sched.timesteps();
        let policy = "none".parse::<CacheSpec>()?.build(family, layers, steps)?;
        let mut denoiser = Denoiser::new(be, &model, &cond, policy)?;
        let mut latents = be.upload(&inputs.latents, &inputs.shape, DType::F32)?;
        let mut eps = be.alloc(&inputs.shape, DType::F32)?;
        let mut x0_prev = if sched.needs_x0_prev() { Some(be.alloc(&inputs.shape, DType::F32)?) } else { None };
        let mut i = 0usize;
        let mut step = |d: &mut Denoiser<'_, B>| -> Result<()> {
            let k = i % steps;
            if k == 0 {
                be.write(&mut latents, &inputs.latents)?; // a new run: the values stay in range
            }
            let t = timesteps[k];
            for copy in 0..batch {
                be.copy_range(&latents, 0, d.input_mut(), copy * numel, numel)?;
            }
            // FLUX: the model's timestep is 1000·(t / 1000) = t, as the pipeline writes it
            be.write(d.timesteps_mut(), &vec![t; batch])?;
            d.forward_written_then(be, k, steps, &mut |be, out| {
                if flux {
                    be.copy(out, &mut eps)
                } else {
                    be.cfg_combine(out, guidance, &mut eps)
                }
            })?;
            be.scheduler_step(&sched.update(k), &mut latents, &eps, x0_prev.as_mut(), None)?;
            be.synchronize()?;
            i += 1;
            Ok(())
        };
        for _ in 0..3 {
            step(&mut denoiser)?;
        }
        let samples = bench(c, "step", p.name, &mut |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                step(&mut denoiser)?;
            }
            Ok(t.elapsed().as_secs_f64())
        })?;
        rows.push(Row {
            name: name("step"),
            kind: "step".into(),
            preset: p.name.into(),
            batch,
            samples,
            extra: json!({ "scheduler": p.scheduler.name() }),
        });
    }
    drop(ws);
    drop(ctx);

    // 20 steps without and with the Δ-DiT cache, in the same process.
    let mut sc = SampleConfig::new(p.scheduler, steps, p.guidance);
    sc.scheduler_config = p.scheduler_config();
    let mut reference: Option<(Vec<f32>, f64)> = None;
    for spec in ["none", "delta"] {
        let kind = if spec == "none" { "sample20-none" } else { "sample20-delta" };
        if !mode.wants(&name(kind)) {
            continue;
        }
        let spec: CacheSpec = spec.parse()?;
        let mut last = None;
        let mut run_once = || -> Result<f64> {
            let out = sample(be, &model, &inputs, &sc, spec.build(family, layers, steps)?, &mut |_, _| {})?;
            let s = out.step_times.iter().map(Duration::as_secs_f64).sum::<f64>();
            last = Some(out);
            Ok(s)
        };
        run_once()?; // warm-up
        let samples = bench(c, kind, p.name, &mut |iters| (0..iters).map(|_| run_once()).sum())?;
        let out = last.expect("ran");
        let blocks: usize = out.blocks_run.iter().sum();
        let t = median(&samples);
        let (rel, speedup) = match &reference {
            Some((r, tn)) => (Some(deltadit::internals::rel_l2(&out.latents, r)), Some(tn / t)),
            None => (None, None),
        };
        let params = spec.build(family, layers, steps)?.params();
        rows.push(Row {
            name: name(kind),
            kind: kind.into(),
            preset: p.name.into(),
            batch,
            samples,
            extra: json!({
                "steps": steps,
                "scheduler": p.scheduler.name(),
                "policy_params": params,
                "blocks": blocks,
                "block_ratio": blocks as f64 / (steps * layers) as f64,
                "speedup_vs_none": speedup,
                "rel_l2_vs_none": rel,
            }),
        });
        if reference.is_none() && kind == "sample20-none" {
            reference = Some((out.latents, t));
        }
    }
    Ok(())
}

fn run<B: Timed>(be: &B, mode: &Mode, gpu: bool) -> Result<()> {
    let default: Vec<&str> = match (gpu, mode.quick) {
        (true, true) => vec!["pixart-alpha-1024", "sd35-medium-1024"],
        (true, false) => vec![
            "pixart-alpha-1024",
            "dit-xl-2-256",
            "pixart-alpha-512",
            "dit-xl-2-512",
            "sd3-medium-1024",
            "sd35-medium-1024",
            "sd35-large-1024",
            "flux-dev-1024",
        ],
        // criterion's test mode: a smoke test of each family
        (false, _) if !mode.bench => vec!["pixart-cpu-small", "sd35-cpu-small", "flux-cpu-small"],
        (false, true) => vec!["pixart-cpu-small", "sd35-cpu-small", "flux-cpu-small"],
        (false, false) => vec!["pixart-cpu-small", "dit-cpu-small", "sd35-cpu-small", "flux-cpu-small"],
    };
    let presets = common::presets(&default)?;
    println!("deltadit step: {} backend ({}) on {}; wall clock, synchronised", B::NAME, be.act_dtype(), be.machine());
    let mut c = mode.criterion(gpu);
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let passes: &[bool] = if be.extra_attention_kernels().is_empty() { &[false] } else { &[false, true] };
    for &extra_kernels in passes {
        for p in &presets {
            // a failure ends this preset, not the run: the rows measured so far are still written
            if let Err(e) = preset_rows(be, mode, &mut c, p, extra_kernels, &mut rows) {
                println!("{}: FAILED: {e}", p.name);
                errors.push(json!({ "preset": p.name, "error": e.to_string() }));
            }
        }
    }
    c.final_summary();
    println!("\n{:<34} {:>12} {:>12} {:>8}  notes", "bench", "median ms", "min ms", "samples");
    let mut out = Vec::new();
    for r in &rows {
        let notes = match r.extra.get("speedup_vs_none").and_then(Value::as_f64) {
            Some(s) => format!(
                "{:.2}× vs none, blocks {:.0}%, rel L2 {:.2e}",
                s,
                100.0 * r.extra["block_ratio"].as_f64().unwrap_or(f64::NAN),
                r.extra["rel_l2_vs_none"].as_f64().unwrap_or(f64::NAN)
            ),
            None => String::new(),
        };
        println!(
            "{:<34} {:>12.3} {:>12.3} {:>8}  {notes}",
            r.name,
            1e3 * median(&r.samples),
            1e3 * min(&r.samples),
            r.samples.len()
        );
        let mut v = json!({
            "name": r.name,
            "kind": r.kind,
            "preset": r.preset,
            "median_ms": 1e3 * median(&r.samples),
            "min_ms": 1e3 * min(&r.samples),
            "samples": r.samples.len(),
            "batch": r.batch,
        });
        if let (Value::Object(a), Value::Object(b)) = (&mut v, &r.extra) {
            a.extend(b.clone());
        }
        out.push(v);
    }
    if mode.bench {
        let report = json!({
            "kind": "deltadit-step",
            "backend": B::NAME,
            "dtype": be.act_dtype().to_string(),
            "machine": be.machine(),
            "threads": rayon::current_num_threads(),
            "date": common::utc_now(),
            "commit": common::commit(),
            "quick": mode.quick,
            "timing": "wall clock, device synchronised after each forward / step / run",
            "results": out,
            "errors": errors,
        });
        let path = common::write_json(&format!("step-{}.json", B::NAME), &report)?;
        println!("wrote {}", path.display());
    }
    if !errors.is_empty() {
        return Err(deltadit::Error::param("presets failed (listed above)", errors.len(), "0"));
    }
    Ok(())
}

fn main() {
    let mode = Mode::from_env();
    common::bench_main(|cpu| run(cpu, &mode, false), |cuda| run(cuda, &mode, true));
}
