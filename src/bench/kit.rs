//! A model folder with what it takes to judge samples, not only time them: the prompts a
//! text-conditioned model was trained on (`captions.safetensors`: `embeds` [K + 1, L, C], and
//! `mask` [K + 1, L] (PixArt) or `pooled` [K + 1, P] (SD3, FLUX), the last row the null caption
//! for guidance), the classes of a
//! class-conditional one, and a classifier of its images (models/digits-classifier beside it).
//! The trained reference models of models/ are such folders. FLUX's samples are packed tokens
//! `[n, (H/2)·(W/2), 4·C]`: they are unpacked to `[n, C, H, W]` images as FluxPipeline's
//! `_unpack_latents` does before they are judged.

use crate::io::safetensors_file::SafetensorsFile;
use crate::model::{Family, ModelConfig, TextInput};
use crate::pipeline::SampleInputs;
use crate::quality::{is_pixel_space, Classifier};
use crate::rng::Rng;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The caption table of a text-conditioned model.
struct Captions {
    embeds: Vec<f32>,
    /// PixArt: the padding mask [rows, len]
    mask: Option<Vec<f32>>,
    /// SD3, FLUX: the pooled embedding [rows, pooled]
    pooled: Option<(Vec<f32>, usize)>,
    /// rows: K classes, then the null caption
    rows: usize,
    len: usize,
    features: usize,
}

/// A model folder and what its samples are judged by.
pub struct ModelKit {
    /// the model folder
    pub dir: PathBuf,
    /// its config
    pub config: ModelConfig,
    captions: Option<Captions>,
    /// the classifier of its images, where one was found
    pub classifier: Option<Classifier>,
}

impl ModelKit {
    /// Reads `dir`'s config, its `captions.safetensors` if any, and the classifier `classifier`
    /// (default: `../digits-classifier/classifier.safetensors` beside the folder, when present).
    pub fn open(dir: &Path, classifier: Option<&Path>) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let captions_path = dir.join("captions.safetensors");
        let captions = if config.family != Family::DiT && captions_path.is_file() {
            let f = SafetensorsFile::open(&captions_path)?;
            let get = |k: &str| -> Result<(Vec<f32>, Vec<usize>)> {
                let t = f.get(k).ok_or_else(|| Error::MissingInput { name: k.into(), path: captions_path.clone() })?;
                Ok((t.to_f32(k)?, t.shape.to_vec()))
            };
            let (embeds, es) = get("embeds")?;
            if es.len() != 3 || es[0] < 2 {
                return Err(Error::input("embeds", format!("expected [K + 1, L, C] (K ≥ 1), found {es:?}")));
            }
            let (mut mask, mut pooled) = (None, None);
            if matches!(config.family, Family::Sd3 | Family::Flux) {
                let (p, ps) = get("pooled")?;
                if ps.len() != 2 || ps[0] != es[0] {
                    return Err(Error::input("pooled", format!("expected [{}, P], found {ps:?}", es[0])));
                }
                pooled = Some((p, ps[1]));
            } else {
                let (m, ms) = get("mask")?;
                if ms[..] != es[..2] {
                    return Err(Error::input("mask", format!("expected [{}, {}], found {ms:?}", es[0], es[1])));
                }
                mask = Some(m);
            }
            Some(Captions { embeds, mask, pooled, rows: es[0], len: es[1], features: es[2] })
        } else {
            None
        };
        let default = dir.parent().map(|p| p.join("digits-classifier/classifier.safetensors"));
        let classifier = match (classifier, default) {
            (Some(p), _) => Some(Classifier::load(p)?),
            (None, Some(p)) if p.is_file() && is_pixel_space(image_channels(&config)) => Some(Classifier::load(&p)?),
            _ => None,
        };
        Ok(ModelKit { dir: dir.to_path_buf(), config, captions, classifier })
    }

    /// The classes samples are asked for: the caption rows but the null one, or the DiT classes.
    /// None: a text model without a caption table.
    pub fn classes(&self) -> Option<usize> {
        match self.config.family {
            Family::DiT => Some(self.config.num_embeds_ada_norm),
            _ => self.captions.as_ref().map(|c| c.rows - 1),
        }
    }

    /// Whether the kit judges images (pixel space, with prompts or classes).
    pub fn judges_images(&self) -> bool {
        is_pixel_space(image_channels(&self.config)) && self.classes().is_some()
    }

    /// The latent height and width samples are drawn at: the config's `sample_size`; for FLUX
    /// (whose config has none) the classifier's image side when the kit judges images, else
    /// FluxPipeline's default latent (128: 1024² pixels through FLUX's VAE).
    pub fn latent_size(&self) -> (usize, usize) {
        let c = image_channels(&self.config);
        match &self.classifier {
            Some(cl) if self.config.family.packed_latents() && c > 0 && cl.inputs() % c == 0 => {
                let side = ((cl.inputs() / c) as f64).sqrt().round() as usize;
                if side * side * c == cl.inputs() && side.is_multiple_of(2) {
                    return (side, side);
                }
                (self.config.sample_size, self.config.sample_size)
            }
            _ => (self.config.sample_size, self.config.sample_size),
        }
    }

    /// `n` samples of `h × w`: image i from its own seeded noise, asking for class i mod K (the
    /// class's caption for PixArt, the null caption as the negative prompt); the classes asked for.
    /// `steps` sizes the injected noise of LCM.
    pub fn inputs(
        &self,
        n: usize,
        (h, w): (usize, usize),
        steps: usize,
        seed: u64,
    ) -> Result<(SampleInputs, Vec<usize>)> {
        let classes = self.classes().ok_or_else(|| {
            Error::input("captions.safetensors", format!("{} has no caption table to prompt with", self.dir.display()))
        })?;
        let c = image_channels(&self.config);
        let numel = c * h * w;
        let mut latents = Vec::with_capacity(n * numel);
        for i in 0..n {
            latents.extend(Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(i as u64)).normal_vec(numel, 1.0));
        }
        let asked: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let mut si = if self.config.family.packed_latents() {
            // FluxPipeline.prepare_latents: noise [n, C, H, W], packed 2×2
            if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
                return Err(Error::input("latents", format!("{h}×{w}: FLUX packs 2×2 patches, the size must be even")));
            }
            let packed = crate::model::families::flux::pack_latents(&latents, [n, c, h, w]);
            SampleInputs::new(packed, vec![n, (h / 2) * (w / 2), 4 * c])
        } else {
            SampleInputs::new(latents, vec![n, c, h, w])
        };
        match (&self.captions, self.config.family) {
            (Some(t), _) => {
                let text = |rows: &[usize]| {
                    let (mut e, mut m) = (Vec::new(), Vec::new());
                    for &r in rows {
                        e.extend_from_slice(&t.embeds[r * t.len * t.features..][..t.len * t.features]);
                        if let Some(mask) = &t.mask {
                            m.extend_from_slice(&mask[r * t.len..][..t.len]);
                        }
                    }
                    TextInput { embeds: e, mask: t.mask.as_ref().map(|_| m), len: t.len }
                };
                let pooled = |rows: &[usize]| {
                    t.pooled
                        .as_ref()
                        .map(|(p, w)| rows.iter().flat_map(|&r| p[r * w..][..*w].iter().copied()).collect())
                };
                let null = vec![t.rows - 1; n];
                si.cond = Some(text(&asked));
                si.uncond = Some(text(&null));
                si.pooled = pooled(&asked);
                si.uncond_pooled = pooled(&null);
            }
            _ => si.class_labels = Some(asked.clone()),
        }
        if steps > 1 {
            si.noise = Some(Rng::new(seed ^ 0x5eed).normal_vec((steps - 1) * n * numel, 1.0));
        }
        Ok((si, asked))
    }
}

/// The channels of the model's images: FLUX packs 2×2 patches of C channels into 4·C.
fn image_channels(cfg: &ModelConfig) -> usize {
    if cfg.family.packed_latents() {
        cfg.in_channels / 4
    } else {
        cfg.in_channels
    }
}

/// Samples `latents` of `shape` as images `[n, C, H, W]` at latent size `latent` (H, W): FLUX's
/// packed `[n, (H/2)·(W/2), 4·C]` tokens unpacked as FluxPipeline's `_unpack_latents`, the others
/// as they are.
pub fn images(
    cfg: &ModelConfig,
    latents: &[f32],
    shape: &[usize],
    (h, w): (usize, usize),
) -> Result<(Vec<f32>, [usize; 4])> {
    match *shape {
        [n, c, sh, sw] if !cfg.family.packed_latents() => Ok((latents.to_vec(), [n, c, sh, sw])),
        [n, tokens, c4] if cfg.family.packed_latents() => {
            let (gh, gw) = (h / 2, w / 2);
            if gh * gw != tokens || !c4.is_multiple_of(4) || latents.len() != n * tokens * c4 {
                return Err(Error::input(
                    "latents",
                    format!("packed {shape:?} is not {h}×{w} latents in 2×2 patches of 4·C channels"),
                ));
            }
            let x = crate::model::families::flux::unpack_latents(latents, n, c4, (gh, gw));
            Ok((x, [n, c4 / 4, h, w]))
        }
        _ => Err(Error::input("latents", format!("shape {shape:?} is not a {} model's latents", cfg.family.name()))),
    }
}

/// Per-image quality of `images` against `reference` (the uncached run from the same noise) and
/// the classifier's accuracy on the classes asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Quality {
    /// mean and worst (lowest) PSNR, dB
    pub psnr_mean: f64,
    #[allow(missing_docs)]
    pub psnr_worst: f64,
    /// mean and worst SSIM
    pub ssim_mean: f64,
    #[allow(missing_docs)]
    pub ssim_worst: f64,
    /// share of images the classifier reads as the class asked for
    pub accuracy: Option<f64>,
}

/// The quality of a batch `[n, c, h, w]` of samples.
pub fn quality(
    images: &[f32],
    reference: &[f32],
    [n, c, h, w]: [usize; 4],
    classifier: Option<&Classifier>,
    asked: &[usize],
) -> Result<Quality> {
    let per = c * h * w;
    if images.len() != n * per || reference.len() != n * per || n == 0 {
        return Err(Error::input(
            "images",
            format!("{} and {} values for {n} images of {per}", images.len(), reference.len()),
        ));
    }
    let judged = classifier.is_some_and(|cl| cl.inputs() == per) && asked.len() == n;
    let (mut q, mut hits) = (Quality { psnr_worst: f64::INFINITY, ssim_worst: f64::INFINITY, ..Default::default() }, 0);
    for (i, (img, r)) in images.chunks(per).zip(reference.chunks(per)).enumerate() {
        let (p, s) = (crate::quality::psnr(img, r), crate::quality::ssim(img, r, [c, h, w]));
        q.psnr_mean += p / n as f64;
        q.ssim_mean += s / n as f64;
        q.psnr_worst = q.psnr_worst.min(p);
        q.ssim_worst = q.ssim_worst.min(s);
        if let (Some(cl), Some(&want), true) = (classifier, asked.get(i), judged) {
            if cl.predict(img)? == want {
                hits += 1;
            }
        }
    }
    q.accuracy = judged.then(|| hits as f64 / n as f64);
    Ok(q)
}
