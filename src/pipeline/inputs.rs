//! The inputs of a forward and of a sampling run: typed, validated, and read from a safetensors
//! file of named tensors by one set of readers (the CLI's `--inputs`, the golden cases).

use crate::io::Inputs;
use crate::model::{Conditioning, Family, ModelConfig, TextInput};
use crate::{error::check_finite, Error, Result};

/// The tensors of one diffusers transformer forward call.
#[derive(Clone, Debug)]
pub struct ForwardInputs {
    /// `hidden_states` [B, C, H, W] (FLUX: packed [B, N, C])
    pub hidden_states: Vec<f32>,
    /// its shape
    pub shape: Vec<usize>,
    /// `timestep` `[B]` (a 0-d timestep broadcasts over the batch, as in diffusers)
    pub timestep: Vec<f32>,
    /// text, micro-conditions or class labels of the batch
    pub cond: Conditioning,
}

/// Host inputs of a sampling run (the tensor conventions of the golden cases).
#[derive(Clone, Debug)]
pub struct SampleInputs {
    /// initial noise [n, C, H, W] (FLUX: packed [n, N, C])
    pub latents: Vec<f32>,
    /// its shape
    pub shape: Vec<usize>,
    /// PixArt: prompt embeddings [n, L, C] and masks [n, L]
    pub cond: Option<TextInput>,
    /// PixArt: the negative (unconditional) prompt, same shape as `cond`
    pub uncond: Option<TextInput>,
    /// PixArt-α micro-conditions per sample: (height_px, width_px); default latent size × 8
    pub resolution: Option<Vec<f32>>,
    /// DiT class labels `[n]`
    pub class_labels: Option<Vec<usize>>,
    /// SD3: pooled prompt embeddings `[n, P]` (`cond_pooled`)
    pub pooled: Option<Vec<f32>>,
    /// SD3: pooled negative-prompt embeddings `[n, P]` (`uncond_pooled`)
    pub uncond_pooled: Option<Vec<f32>>,
    /// LCM: noise injected after step k, [steps − 1, n, C, H, W]
    pub noise: Option<Vec<f32>>,
    /// FLUX: RoPE positions of the image tokens `[N, 3]` (`img_ids`); default FluxPipeline's
    /// grid of a square latent
    pub image_ids: Option<Vec<f32>>,
}

/// `[n, L, C]` embeddings `embeds` and their optional `[n, L]` 0/1 mask `mask`.
fn read_text(inp: &Inputs, embeds: &str, mask: &str, n: usize) -> Result<Option<TextInput>> {
    let Some((e, es)) = inp.f32_opt(embeds, 3)? else { return Ok(None) };
    if es[0] != n {
        return Err(Error::input(embeds, format!("expected batch {n}, found shape {es:?}")));
    }
    let m = inp.f32_opt(mask, 2)?;
    if let Some((_, ms)) = &m {
        if ms[..] != [n, es[1]] {
            return Err(Error::input(mask, format!("expected [{n}, {}], found {ms:?}", es[1])));
        }
    }
    Ok(Some(TextInput { embeds: e, mask: m.map(|(v, _)| v), len: es[1] }))
}

/// `class_labels` [n] as non-negative integers.
fn read_labels(inp: &Inputs, n: usize) -> Result<Vec<usize>> {
    let (y, ys) = inp.i64("class_labels", 1)?;
    if ys[..] != [n] {
        return Err(Error::input("class_labels", format!("expected [{n}], found {ys:?}")));
    }
    y.iter()
        .map(|&v| usize::try_from(v).map_err(|_| Error::input("class_labels", format!("negative label {v}"))))
        .collect()
}

/// A `[n, cols]` tensor `name`, when present.
fn read_rows(inp: &Inputs, name: &str, n: usize, cols: usize) -> Result<Option<Vec<f32>>> {
    match inp.f32_opt(name, 2)? {
        None => Ok(None),
        Some((v, s)) if s[..] == [n, cols] => Ok(Some(v)),
        Some((_, s)) => Err(Error::input(name, format!("expected [{n}, {cols}], found {s:?}"))),
    }
}

/// A `[B, C, H, W]` tensor `name` with the model's input channels (FLUX: packed `[B, N, C]`).
fn read_latents(inp: &Inputs, name: &str, cfg: &ModelConfig) -> Result<(Vec<f32>, Vec<usize>)> {
    if cfg.family.packed_latents() {
        let (x, s) = inp.f32(name, 3)?;
        if s[2] != cfg.in_channels {
            return Err(Error::input(name, format!("expected packed [B, N, {}], found {s:?}", cfg.in_channels)));
        }
        return Ok((x, s));
    }
    let (x, s) = inp.f32(name, 4)?;
    if s[1] != cfg.in_channels {
        return Err(Error::input(name, format!("expected [B, {}, H, W], found {s:?}", cfg.in_channels)));
    }
    Ok((x, s))
}

/// `[rows, 3]` RoPE position ids `name`, when present.
fn read_ids(inp: &Inputs, name: &str, rows: usize) -> Result<Option<Vec<f32>>> {
    match inp.f32_opt(name, 2)? {
        None => Ok(None),
        Some((v, s)) if s[0] == rows => Ok(Some(v)),
        Some((_, s)) => Err(Error::input(name, format!("expected [{rows}, axes], found {s:?}"))),
    }
}

/// The (height, width) token grid of FLUX latents with `n` tokens: a square, or n × 1 where the
/// caller gives its own `img_ids`.
fn packed_grid(n: usize, ids: bool) -> Result<(usize, usize)> {
    let side = (n as f64).sqrt().round() as usize;
    match (side * side == n, ids) {
        (true, _) => Ok((side, side)),
        (false, true) => Ok((n, 1)),
        (false, false) => Err(Error::input(
            "latents",
            format!("{n} packed tokens are not a square grid: give img_ids [{n}, 3] for this latent"),
        )),
    }
}

impl ForwardInputs {
    /// Reads the tensors of the diffusers forward call (`hidden_states`, `timestep`,
    /// `encoder_hidden_states`, `encoder_attention_mask`, `resolution`, `aspect_ratio`,
    /// `class_labels`) for a model with `cfg`.
    pub fn from_inputs(inp: &Inputs, cfg: &ModelConfig) -> Result<Self> {
        let (hidden_states, shape) = read_latents(inp, "hidden_states", cfg)?;
        // Spatial [B, C, H, W]; packed [B, N, C] is N × 1 (the ids carry the positions).
        let (b, h, w) =
            if cfg.family.packed_latents() { (shape[0], shape[1], 1) } else { (shape[0], shape[2], shape[3]) };
        let timestep = match inp.f32_opt("timestep", 1)? {
            Some((t, ts)) if ts[..] == [b] => t,
            Some((_, ts)) => return Err(Error::input("timestep", format!("expected [{b}], found {ts:?}"))),
            // a 0-d timestep broadcasts over the batch, as in diffusers
            None => {
                let (t, _) = inp.f32("timestep", 0)?;
                let t = t.first().copied().ok_or_else(|| Error::input("timestep", "empty"))?;
                vec![t; b]
            }
        };
        let mut cond = Conditioning { batch: b, height: h, width: w, ..Default::default() };
        match cfg.family {
            Family::PixArt => {
                let text = read_text(inp, "encoder_hidden_states", "encoder_attention_mask", b)?;
                cond.text = Some(text.ok_or_else(|| Error::MissingInput {
                    name: "encoder_hidden_states".into(),
                    path: inp.path().to_path_buf(),
                })?);
                if cfg.use_additional_conditions {
                    let missing = |n: &str| Error::MissingInput { name: n.into(), path: inp.path().to_path_buf() };
                    cond.resolution = Some(read_rows(inp, "resolution", b, 2)?.ok_or_else(|| missing("resolution"))?);
                    cond.aspect_ratio =
                        Some(read_rows(inp, "aspect_ratio", b, 1)?.ok_or_else(|| missing("aspect_ratio"))?);
                }
            }
            Family::DiT => cond.class_labels = Some(read_labels(inp, b)?),
            Family::Flux => {
                let missing = |n: &str| Error::MissingInput { name: n.into(), path: inp.path().to_path_buf() };
                let text = read_text(inp, "encoder_hidden_states", "encoder_attention_mask", b)?;
                let text = text.ok_or_else(|| missing("encoder_hidden_states"))?;
                let p = cfg.pooled_projection_dim.unwrap_or(0);
                cond.pooled =
                    Some(read_rows(inp, "pooled_projections", b, p)?.ok_or_else(|| missing("pooled_projections"))?);
                cond.image_ids = read_ids(inp, "img_ids", h)?;
                cond.text_ids = read_ids(inp, "txt_ids", text.len)?;
                cond.text = Some(text);
                cond.guidance = match inp.f32_opt("guidance", 1)? {
                    Some((g, gs)) if gs[..] == [b] => Some(g),
                    Some((_, gs)) => return Err(Error::input("guidance", format!("expected [{b}], found {gs:?}"))),
                    None => None,
                };
            }
            _ => {
                let missing = |n: &str| Error::MissingInput { name: n.into(), path: inp.path().to_path_buf() };
                let text = read_text(inp, "encoder_hidden_states", "encoder_attention_mask", b)?;
                cond.text = Some(text.ok_or_else(|| missing("encoder_hidden_states"))?);
                let p = cfg.pooled_projection_dim.unwrap_or(0);
                cond.pooled =
                    Some(read_rows(inp, "pooled_projections", b, p)?.ok_or_else(|| missing("pooled_projections"))?);
                if let Some((v, _)) = inp.i64_opt("skip_layers", 1)? {
                    cond.skip_layers = v
                        .iter()
                        .map(|&k| {
                            usize::try_from(k).map_err(|_| Error::input("skip_layers", format!("negative block {k}")))
                        })
                        .collect::<Result<_>>()?;
                }
            }
        }
        Ok(ForwardInputs { hidden_states, shape, timestep, cond })
    }

    /// Checks sizes and values: every tensor finite, the timesteps one per sample.
    pub fn validate(&self) -> Result<()> {
        let n = self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(self.hidden_states.len()) || !(3..=4).contains(&self.shape.len()) {
            return Err(Error::input(
                "hidden_states",
                format!("{} values for shape {:?}", self.hidden_states.len(), self.shape),
            ));
        }
        let b = self.shape[0];
        if self.timestep.len() != b {
            return Err(Error::input("timestep", format!("expected {b} values, found {}", self.timestep.len())));
        }
        // [B, C, H, W], or packed [B, N, C] with N = height·width
        let size_ok = match self.shape[..] {
            [_, _, h, w] => [self.cond.height, self.cond.width] == [h, w],
            [_, n, _] => self.cond.height.checked_mul(self.cond.width) == Some(n),
            _ => false,
        };
        if self.cond.batch != b || !size_ok {
            return Err(Error::input("hidden_states", "the conditioning's batch and size differ from hidden_states"));
        }
        check_finite("hidden_states", &self.hidden_states)?;
        check_finite("timestep", &self.timestep)?;
        self.cond.validate()
    }
}

impl SampleInputs {
    /// Initial noise `latents` of `shape` [n, C, H, W] (FLUX: packed [n, N, C]) and no
    /// conditioning yet (set `cond`/`uncond` for PixArt, `class_labels` for DiT, `noise` for LCM).
    pub fn new(latents: Vec<f32>, shape: impl Into<Vec<usize>>) -> Self {
        SampleInputs {
            latents,
            shape: shape.into(),
            cond: None,
            uncond: None,
            resolution: None,
            class_labels: None,
            pooled: None,
            uncond_pooled: None,
            noise: None,
            image_ids: None,
        }
    }

    /// Samples, and the latent size (height, width): `[n, C, H, W]`, or FLUX's packed
    /// `[n, N, C]` on its token grid.
    pub(crate) fn size(&self) -> Result<(usize, usize, usize)> {
        match self.shape[..] {
            [n, _, h, w] => Ok((n, h, w)),
            [n, t, _] => {
                let (h, w) = packed_grid(t, self.image_ids.is_some())?;
                Ok((n, h, w))
            }
            _ => Err(Error::input(
                "latents",
                format!("shape {:?}: expected [n, C, H, W] or packed [n, N, C]", self.shape),
            )),
        }
    }

    /// Latent channels.
    pub(crate) fn channels(&self) -> usize {
        match self.shape[..] {
            [_, _, c] => c,
            _ => self.shape.get(1).copied().unwrap_or(0),
        }
    }

    /// Reads the sampling tensors: `latents` [n, C, H, W]; PixArt `cond_embeds`/`cond_mask`/
    /// `uncond_embeds`/`uncond_mask` (and optional `resolution` `[n, 2]`); DiT `class_labels` `[n]`;
    /// LCM `noise` [steps − 1, n, C, H, W].
    pub fn from_inputs(inp: &Inputs, cfg: &ModelConfig) -> Result<Self> {
        let (latents, shape) = read_latents(inp, "latents", cfg)?;
        let n = shape[0];
        let tokens = shape[1];
        let mut si = SampleInputs::new(latents, shape.clone());
        match cfg.family {
            Family::PixArt => {
                si.cond = read_text(inp, "cond_embeds", "cond_mask", n)?;
                si.uncond = read_text(inp, "uncond_embeds", "uncond_mask", n)?;
                si.resolution = read_rows(inp, "resolution", n, 2)?;
            }
            Family::DiT => si.class_labels = Some(read_labels(inp, n)?),
            Family::Flux => {
                let p = cfg.pooled_projection_dim.unwrap_or(0);
                si.cond = read_text(inp, "cond_embeds", "cond_mask", n)?;
                si.pooled = read_rows(inp, "cond_pooled", n, p)?;
                // the negative prompt of true CFG (FluxPipeline's negative_prompt_embeds)
                si.uncond = read_text(inp, "uncond_embeds", "uncond_mask", n)?;
                si.uncond_pooled = read_rows(inp, "uncond_pooled", n, p)?;
                si.image_ids = read_ids(inp, "img_ids", tokens)?;
            }
            _ => {
                let p = cfg.pooled_projection_dim.unwrap_or(0);
                si.cond = read_text(inp, "cond_embeds", "cond_mask", n)?;
                si.uncond = read_text(inp, "uncond_embeds", "uncond_mask", n)?;
                si.pooled = read_rows(inp, "cond_pooled", n, p)?;
                si.uncond_pooled = read_rows(inp, "uncond_pooled", n, p)?;
            }
        }
        if let Some((noise, ns)) = inp.f32_opt("noise", 5)? {
            if ns[1..] != shape[..] {
                return Err(Error::input("noise", format!("expected [steps − 1, {shape:?}…], found {ns:?}")));
            }
            si.noise = Some(noise);
        }
        Ok(si)
    }

    /// Elements of one sample batch, n·C·H·W (None when that overflows).
    pub(crate) fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// The prompt embeddings of the model batch: `cond`, or [uncond, cond] when guided.
    fn guided_text(&self, family: Family, guided: bool) -> Result<TextInput> {
        let n = self.shape.first().copied().unwrap_or(0);
        let cond = self.cond.as_ref().ok_or_else(|| {
            Error::input("cond_embeds", format!("missing ({} sampling needs prompt embeddings)", family.short_name()))
        })?;
        if !guided {
            return Ok(cond.clone());
        }
        let un =
            self.uncond.as_ref().ok_or_else(|| Error::input("uncond_embeds", "missing (needed for guidance > 1)"))?;
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
        Ok(TextInput { embeds: [un.embeds.as_slice(), cond.embeds.as_slice()].concat(), mask, len: cond.len })
    }

    /// The per-run conditioning of the model batch (CFG copies included, in each pipeline's
    /// order: PixArt [uncond, cond], DiT [cond, null]). `null_class`: DiT's class for the
    /// unconditional half.
    pub fn conditioning(&self, family: Family, null_class: usize, guided: bool) -> Result<Conditioning> {
        let (n, h, w) = self.size()?;
        let batch = if guided { 2 * n } else { n };
        let mut c = Conditioning { batch, height: h, width: w, ..Default::default() };
        match family {
            Family::PixArt => {
                c.text = Some(self.guided_text(family, guided)?);
                // PixArt-α passes the (binned) pixel size of the image: the latent size × 8.
                let res: Vec<f32> = match &self.resolution {
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
            Family::Flux => {
                // FluxPipeline: no CFG batch (the guidance scale is embedded; the caller sets
                // `guidance` for models with guidance_embeds)
                if guided {
                    return Err(Error::param(
                        "guidance",
                        "a classifier-free guidance batch",
                        "FLUX's embedded guidance (no CFG batch)",
                    ));
                }
                c.text = Some(self.guided_text(family, false)?);
                c.pooled = Some(self.pooled.clone().ok_or_else(|| {
                    Error::input("cond_pooled", "missing (FLUX sampling needs pooled prompt embeddings)")
                })?);
                c.image_ids = self.image_ids.clone();
            }
            Family::Sd3 => {
                // StableDiffusion3Pipeline: [uncond, cond] for both the text and the pooled text
                c.text = Some(self.guided_text(family, guided)?);
                let cond = self.pooled.as_ref().ok_or_else(|| {
                    Error::input("cond_pooled", "missing (SD3 sampling needs pooled prompt embeddings)")
                })?;
                c.pooled = Some(if guided {
                    let un = self
                        .uncond_pooled
                        .as_ref()
                        .ok_or_else(|| Error::input("uncond_pooled", "missing (needed for guidance > 1)"))?;
                    if un.len() != cond.len() {
                        return Err(Error::input("uncond_pooled", "must have the shape of cond_pooled"));
                    }
                    [un.as_slice(), cond.as_slice()].concat()
                } else {
                    cond.clone()
                });
            }
            _ => {
                let labels = self
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
}
