//! The sampling loop: timesteps, the classifier-free-guidance batch in each pipeline's order
//! (PixArt [uncond, cond], DiT [cond, null]), the cache engine per step, the learned-sigma split
//! and the fused scheduler update. Latents, Δ buffers and activations stay on the backend; the
//! host reads back only the final latents (and the policies' two-float probes).

use crate::backend::Cfg;
use crate::cache::{CacheEngine, CachePolicy, StepPlan};
use crate::model::{Conditioning, Family, TextInput, Transformer};
use crate::sampler::{Scheduler, SchedulerName};
use crate::{Backend, DType, Error, Result};
use std::time::{Duration, Instant};

/// Host inputs of a sampling run (the tensor conventions of the golden cases).
#[derive(Clone, Debug)]
pub struct SampleInputs {
    /// initial noise [n, C, H, W]
    pub latents: Vec<f32>,
    pub shape: [usize; 4],
    /// PixArt: prompt embeddings [n, L, C] and masks [n, L]
    pub cond: Option<TextInput>,
    pub uncond: Option<TextInput>,
    /// PixArt-α micro-conditions per sample: (height_px, width_px); default latent size × 8
    pub resolution: Option<Vec<f32>>,
    /// DiT class labels [n]
    pub class_labels: Option<Vec<usize>>,
    /// LCM: noise injected after step k, [steps − 1, n, C, H, W]
    pub noise: Option<Vec<f32>>,
}

#[derive(Clone, Debug)]
pub struct SampleConfig {
    pub scheduler: SchedulerName,
    pub steps: usize,
    /// CFG applies when > 1 (as in diffusers)
    pub guidance: f32,
    /// keep every step's latents (tests, debugging)
    pub keep_per_step: bool,
}

#[derive(Clone, Debug)]
pub struct SampleOutput {
    pub latents: Vec<f32>,
    pub shape: [usize; 4],
    pub timesteps: Vec<i64>,
    /// block evaluations per step
    pub blocks_run: Vec<usize>,
    pub plans: Vec<StepPlan>,
    pub probes: Vec<Option<f32>>,
    /// wall time of each step (the backend synchronised at the end of each)
    pub step_times: Vec<Duration>,
    pub latents_per_step: Vec<Vec<f32>>,
}

/// Builds the per-run conditioning for the model batch (CFG copies included, in each pipeline's
/// order). `null_class`: DiT's class for the unconditional half of the CFG batch.
pub fn conditioning(model_family: Family, null_class: usize, inp: &SampleInputs, guided: bool) -> Result<Conditioning> {
    let [n, _, h, w] = inp.shape;
    let batch = if guided { 2 * n } else { n };
    let mut c = Conditioning { batch, height: h, width: w, ..Default::default() };
    match model_family {
        Family::PixArt => {
            let cond = inp
                .cond
                .as_ref()
                .ok_or_else(|| Error::input("cond_embeds", "missing (PixArt sampling needs prompt embeddings)"))?;
            c.text = Some(if guided {
                let un = inp
                    .uncond
                    .as_ref()
                    .ok_or_else(|| Error::input("uncond_embeds", "missing (needed for guidance > 1)"))?;
                if un.len != cond.len || un.embeds.len() != cond.embeds.len() {
                    return Err(Error::input(
                        "uncond_embeds",
                        format!("must have the shape of cond_embeds ({} tokens)", cond.len),
                    ));
                }
                let mask = match (&un.mask, &cond.mask) {
                    (None, None) => None,
                    (u, c2) => {
                        let ones = vec![1.0; n * cond.len];
                        Some([u.as_deref().unwrap_or(&ones), c2.as_deref().unwrap_or(&ones)].concat())
                    }
                };
                TextInput { embeds: [un.embeds.as_slice(), cond.embeds.as_slice()].concat(), mask, len: cond.len }
            } else {
                cond.clone()
            });
            // PixArt-α passes the (binned) pixel size of the image: the latent size × 8.
            let res: Vec<f32> = match &inp.resolution {
                Some(r) => r.clone(),
                None => (0..n).flat_map(|_| [(h * 8) as f32, (w * 8) as f32]).collect(),
            };
            if res.len() != 2 * n {
                return Err(Error::input("resolution", format!("expected [{n}, 2], found {} values", res.len())));
            }
            let ar: Vec<f32> = res.chunks(2).map(|r| r[0] / r[1]).collect();
            let dup = |v: &[f32]| if guided { [v, v].concat() } else { v.to_vec() };
            c.resolution = Some(dup(&res));
            c.aspect_ratio = Some(dup(&ar));
        }
        Family::DiT => {
            let labels = inp
                .class_labels
                .as_ref()
                .ok_or_else(|| Error::input("class_labels", "missing (DiT sampling needs class labels)"))?;
            if labels.len() != n {
                return Err(Error::input("class_labels", format!("expected {n} labels, found {}", labels.len())));
            }
            c.class_labels = Some(if guided {
                labels.iter().copied().chain(std::iter::repeat_n(null_class, n)).collect()
            } else {
                labels.clone()
            });
        }
    }
    Ok(c)
}

/// Samples with `policy`, calling `on_step(i, steps)` after every step (progress bars).
pub fn sample<B: Backend>(
    be: &B,
    model: &Transformer<B>,
    inp: &SampleInputs,
    cfg: &SampleConfig,
    policy: Box<dyn CachePolicy>,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<SampleOutput> {
    let mc = &model.config;
    let [n, c, h, w] = inp.shape;
    if c != mc.in_channels {
        return Err(Error::input(
            "latents",
            format!("expected {} channels, found shape {:?}", mc.in_channels, inp.shape),
        ));
    }
    if inp.latents.len() != n * c * h * w || n == 0 {
        return Err(Error::input("latents", format!("expected {} values for shape {:?}", n * c * h * w, inp.shape)));
    }
    let scheduler = Scheduler::new(cfg.scheduler, cfg.steps)?;
    let guided = cfg.guidance > 1.0;
    let cond = conditioning(mc.family, mc.num_embeds_ada_norm, inp, guided)?;
    let sample_numel = n * c * h * w;
    if let Some(noise) = &inp.noise {
        if noise.len() != cfg.steps.saturating_sub(1) * sample_numel {
            return Err(Error::input(
                "noise",
                format!("expected [{}, {n}, {c}, {h}, {w}]", cfg.steps.saturating_sub(1)),
            ));
        }
    } else if cfg.scheduler == SchedulerName::Lcm && cfg.steps > 1 {
        return Err(Error::input(
            "noise",
            "LCM needs the injected noise [steps − 1, n, C, H, W] (runs are reproducible only with it)",
        ));
    }

    let ctx = model.context(be, &cond)?;
    let mut ws = model.workspace(be, &ctx)?;
    let mut engine = CacheEngine::new(be, model, &ws, policy)?;
    let mut latents = be.upload(&inp.latents, &inp.shape, DType::F32)?;
    let mut eps = be.alloc(&inp.shape, DType::F32)?;
    let mut x0_prev = if scheduler.needs_x0_prev() { Some(be.alloc(&inp.shape, DType::F32)?) } else { None };
    let mut noise_buf = if inp.noise.is_some() { Some(be.alloc(&inp.shape, DType::F32)?) } else { None };
    let guidance =
        if guided { Cfg::On { scale: cfg.guidance, cond_first: mc.family == Family::DiT } } else { Cfg::Off };
    let batch = ctx.batch;

    let mut out = SampleOutput {
        latents: Vec::new(),
        shape: inp.shape,
        timesteps: scheduler.timesteps().to_vec(),
        blocks_run: Vec::new(),
        plans: Vec::new(),
        probes: Vec::new(),
        step_times: Vec::new(),
        latents_per_step: Vec::new(),
    };
    for (i, &t) in scheduler.timesteps().iter().enumerate() {
        let start = Instant::now();
        // Model input: the latents, twice under CFG (both halves see the same sample).
        for copy in 0..batch / n {
            be.copy_range(&latents, 0, &mut ws.model_in, copy * sample_numel, sample_numel)?;
        }
        be.write(&mut ws.t, &vec![t as f32; batch])?;
        let report = engine.step(be, model, &ctx, &mut ws, i, cfg.steps, &mut |be, ws| {
            be.cfg_combine(&ws.model_out, guidance, &mut eps)
        })?;
        let needs_noise = scheduler.needs_noise(i);
        if needs_noise {
            let noise = inp.noise.as_ref().expect("checked above");
            be.write(noise_buf.as_mut().unwrap(), &noise[i * sample_numel..(i + 1) * sample_numel])?;
        }
        be.scheduler_step(
            &scheduler.update(i),
            &mut latents,
            &eps,
            x0_prev.as_mut(),
            if needs_noise { noise_buf.as_ref() } else { None },
        )?;
        be.synchronize()?;
        out.step_times.push(start.elapsed());
        out.blocks_run.push(report.blocks_run);
        out.plans.push(report.plan);
        out.probes.push(report.probe);
        if cfg.keep_per_step {
            out.latents_per_step.push(be.download(&latents)?);
        }
        on_step(i + 1, cfg.steps);
    }
    out.latents = be.download(&latents)?;
    Ok(out)
}

/// One forward from the tensors of the diffusers `forward` call (`hidden_states`, `timestep`,
/// `encoder_hidden_states`, `encoder_attention_mask`, `resolution`, `aspect_ratio`,
/// `class_labels`); returns `sample` [B, C_out, H, W].
pub fn forward_inputs<B: Backend>(
    be: &B,
    model: &Transformer<B>,
    inp: &crate::io::Inputs,
) -> Result<(Vec<f32>, [usize; 4])> {
    let mc = &model.config;
    let (x, xs) = inp.f32("hidden_states", 4)?;
    let (b, h, w) = (xs[0], xs[2], xs[3]);
    if xs[1] != mc.in_channels {
        return Err(Error::input("hidden_states", format!("expected [B, {}, H, W], found {xs:?}", mc.in_channels)));
    }
    let (t, ts) = match inp.f32("timestep", 1) {
        Ok(v) => v,
        Err(Error::Input { .. }) => {
            // a 0-d timestep broadcasts over the batch, as in diffusers
            let (t, _) = inp.f32("timestep", 0)?;
            (vec![t[0]; b], vec![b])
        }
        Err(e) => return Err(e),
    };
    if ts[0] != b {
        return Err(Error::input("timestep", format!("expected [{b}], found {ts:?}")));
    }
    let mut c = Conditioning { batch: b, height: h, width: w, ..Default::default() };
    match mc.family {
        Family::PixArt => {
            let (e, es) = inp.f32("encoder_hidden_states", 3)?;
            if es[0] != b {
                return Err(Error::input("encoder_hidden_states", format!("expected batch {b}, found {es:?}")));
            }
            let mask = inp.f32_opt("encoder_attention_mask", 2)?;
            if let Some((_, ms)) = &mask {
                if ms[..] != [b, es[1]] {
                    return Err(Error::input(
                        "encoder_attention_mask",
                        format!("expected [{b}, {}], found {ms:?}", es[1]),
                    ));
                }
            }
            let mask = mask.map(|(m, _)| m);
            c.text = Some(TextInput { embeds: e, mask, len: es[1] });
            if mc.use_additional_conditions {
                let (r, rs) = inp.f32("resolution", 2)?;
                if rs != [b, 2] {
                    return Err(Error::input("resolution", format!("expected [{b}, 2], found {rs:?}")));
                }
                let (a, as_) = inp.f32("aspect_ratio", 2)?;
                if as_ != [b, 1] {
                    return Err(Error::input("aspect_ratio", format!("expected [{b}, 1], found {as_:?}")));
                }
                c.resolution = Some(r);
                c.aspect_ratio = Some(a);
            }
        }
        Family::DiT => {
            let (y, ys) = inp.i64("class_labels", 1)?;
            if ys != [b] {
                return Err(Error::input("class_labels", format!("expected [{b}], found {ys:?}")));
            }
            let labels = y
                .iter()
                .map(|&v| usize::try_from(v).map_err(|_| Error::input("class_labels", format!("negative label {v}"))))
                .collect::<Result<Vec<_>>>()?;
            c.class_labels = Some(labels);
        }
    }
    let ctx = model.context(be, &c)?;
    let mut ws = model.workspace(be, &ctx)?;
    model.forward(be, &ctx, &mut ws, &x, &t)?;
    let out = be.download(&ws.model_out)?;
    Ok((out, [b, mc.out_channels, h, w]))
}

impl SampleInputs {
    /// Reads the sampling tensors: `latents` [n, C, H, W]; PixArt `cond_embeds`/`cond_mask`/
    /// `uncond_embeds`/`uncond_mask` (and optional `resolution` [n, 2]); DiT `class_labels` [n];
    /// LCM `noise` [steps − 1, n, C, H, W].
    pub fn from_inputs(inp: &crate::io::Inputs, family: Family) -> Result<Self> {
        let (latents, s) = inp.f32("latents", 4)?;
        let shape = [s[0], s[1], s[2], s[3]];
        let n = shape[0];
        let text = |embeds: &str, mask: &str| -> Result<Option<TextInput>> {
            let Some((e, es)) = inp.f32_opt(embeds, 3)? else { return Ok(None) };
            if es[0] != n {
                return Err(Error::input(embeds, format!("expected batch {n} (as latents), found {es:?}")));
            }
            let m = inp.f32_opt(mask, 2)?;
            if let Some((_, ms)) = &m {
                if ms[..] != [n, es[1]] {
                    return Err(Error::input(mask, format!("expected [{n}, {}], found {ms:?}", es[1])));
                }
            }
            Ok(Some(TextInput { embeds: e, mask: m.map(|(v, _)| v), len: es[1] }))
        };
        let mut si = SampleInputs {
            latents,
            shape,
            cond: None,
            uncond: None,
            resolution: None,
            class_labels: None,
            noise: None,
        };
        match family {
            Family::PixArt => {
                si.cond = text("cond_embeds", "cond_mask")?;
                si.uncond = text("uncond_embeds", "uncond_mask")?;
                if let Some((r, rs)) = inp.f32_opt("resolution", 2)? {
                    if rs[..] != [n, 2] {
                        return Err(Error::input("resolution", format!("expected [{n}, 2], found {rs:?}")));
                    }
                    si.resolution = Some(r);
                }
            }
            Family::DiT => {
                let (y, ys) = inp.i64("class_labels", 1)?;
                if ys[..] != [n] {
                    return Err(Error::input("class_labels", format!("expected [{n}], found {ys:?}")));
                }
                si.class_labels = Some(
                    y.iter()
                        .map(|&v| {
                            usize::try_from(v).map_err(|_| Error::input("class_labels", format!("negative label {v}")))
                        })
                        .collect::<Result<_>>()?,
                );
            }
        }
        if let Some((noise, ns)) = inp.f32_opt("noise", 5)? {
            if ns[1..] != shape {
                return Err(Error::input(
                    "noise",
                    format!("expected [steps − 1, {n}, {}, {}, {}], found {ns:?}", shape[1], shape[2], shape[3]),
                ));
            }
            si.noise = Some(noise);
        }
        Ok(si)
    }
}
