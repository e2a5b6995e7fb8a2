//! Model configuration from a diffusers `config.json`, with the defaults diffusers derives when
//! keys are absent (MODEL_SPEC.md §1 and §4).

use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Which transformer the checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Family {
    /// `PixArtTransformer2DModel` (adaLN-single, cross-attention to T5 text).
    PixArt,
    /// `DiTTransformer2DModel` (adaLN-Zero, class labels).
    DiT,
    /// `SD3Transformer2DModel` (MMDiT: joint attention over image and text streams; SD3, SD3.5
    /// with RMS qk norm and MMDiT-X dual attention).
    Sd3,
    /// `FluxTransformer2DModel` (FLUX.1 dev/schnell: double-stream MMDiT blocks over [context,
    /// image] with RoPE, then single-stream blocks; packed latents `[B, N, C]`).
    Flux,
}

impl Family {
    /// The diffusers class name.
    pub fn name(self) -> &'static str {
        match self {
            Family::PixArt => "PixArtTransformer2DModel",
            Family::DiT => "DiTTransformer2DModel",
            Family::Sd3 => "SD3Transformer2DModel",
            Family::Flux => "FluxTransformer2DModel",
        }
    }

    /// The short name (`pixart`, `dit`, `sd3`, `flux`) used by the golden cases and the Python package.
    pub fn short_name(self) -> &'static str {
        match self {
            Family::PixArt => "pixart",
            Family::DiT => "dit",
            Family::Sd3 => "sd3",
            Family::Flux => "flux",
        }
    }

    /// Whether the pipeline orders a guided batch [cond, uncond] (DiT: [cond, null]); PixArt and
    /// SD3 use [uncond, cond].
    pub fn cond_first(self) -> bool {
        self == Family::DiT
    }

    /// Whether the model is trained for flow matching (velocity prediction, σ schedules).
    pub fn flow_matching(self) -> bool {
        matches!(self, Family::Sd3 | Family::Flux)
    }

    /// Whether the latents are packed tokens `[B, N, C]` (FLUX: 2×2 patches packed by the
    /// pipeline) rather than a `[B, C, H, W]` grid.
    pub fn packed_latents(self) -> bool {
        self == Family::Flux
    }
}

/// The keys of a config.json object, read with the defaults diffusers uses; errors name the key.
pub(crate) struct Keys<'a>(pub &'a serde_json::Map<String, Value>);

impl Keys<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    pub fn usize_or(&self, k: &str, d: usize) -> Result<usize> {
        match self.get(k) {
            None => Ok(d),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| config_err(Some(k), format!("must be a non-negative integer, found {v}"))),
        }
    }

    pub fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        match self.get(k) {
            None => Ok(None),
            Some(_) => self.usize_or(k, 0).map(Some),
        }
    }

    pub fn opt_str(&self, k: &str) -> Result<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| config_err(Some(k), format!("must be a string, found {v}"))),
        }
    }

    pub fn str_or(&self, k: &str, d: &str) -> Result<String> {
        Ok(self.opt_str(k)?.unwrap_or_else(|| d.to_string()))
    }

    pub fn bool_or(&self, k: &str, d: bool) -> Result<bool> {
        match self.get(k) {
            None => Ok(d),
            Some(v) => v.as_bool().ok_or_else(|| config_err(Some(k), format!("must be a boolean, found {v}"))),
        }
    }

    pub fn f64_of(&self, k: &str) -> Result<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| config_err(Some(k), format!("must be a number, found {v}"))),
        }
    }

    /// A list of non-negative integers (a tuple in diffusers), empty when absent.
    pub fn usize_list(&self, k: &str) -> Result<Vec<usize>> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|x| usize::try_from(x).ok())
                        .ok_or_else(|| config_err(Some(k), format!("must list non-negative integers, found {v}")))
                })
                .collect(),
            Some(v) => Err(config_err(Some(k), format!("must be a list of integers, found {v}"))),
        }
    }
}

/// Largest hidden size, channel count or sample size a config may ask for (kernels index rows and
/// columns in 32 bits; this keeps every product of two within range).
pub(crate) const MAX_DIM: usize = 1 << 16;
/// Most transformer blocks.
pub(crate) const MAX_LAYERS: usize = 1024;
/// Largest patch size.
const MAX_PATCH: usize = 64;
/// Most DiT classes.
const MAX_CLASSES: usize = 1 << 20;

pub(crate) fn config_err(key: Option<&str>, msg: impl Into<String>) -> Error {
    Error::Config { path: "config.json".into(), key: key.map(str::to_string), msg: msg.into() }
}

/// Everything the runtime needs from `config.json` (made by [`ModelConfig::from_file`] or
/// [`ModelConfig::from_json_str`], which validate it).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ModelConfig {
    /// which transformer
    pub family: Family,
    /// attention heads
    pub num_attention_heads: usize,
    /// channels per head
    pub attention_head_dim: usize,
    /// latent channels in
    pub in_channels: usize,
    /// channels out (twice `in_channels` with a learned variance)
    pub out_channels: usize,
    /// transformer blocks
    pub num_layers: usize,
    /// patch size of the patch embedding
    pub patch_size: usize,
    /// the latent size the model was trained at (the position embedding's base grid)
    pub sample_size: usize,
    /// Features of the text states the cross-attention reads (PixArt); None for DiT.
    pub cross_attention_dim: Option<usize>,
    /// T5 features before `caption_projection` (PixArt); None: no caption projection.
    pub caption_channels: Option<usize>,
    /// LayerNorm eps of norm1/norm2 (PixArt) or norm3 (DiT).
    pub norm_eps: f32,
    /// Positional-embedding grid scale (PixArt: `max(sample_size // 64, 1)` when absent).
    pub interpolation_scale: f64,
    /// PixArt-α resolution/aspect-ratio micro-conditions.
    pub use_additional_conditions: bool,
    /// DiT: number of classes (the table has one more row, the null class).
    pub num_embeds_ada_norm: usize,
    /// biases on the attention projections
    pub attention_bias: bool,
    /// SD3: features of the text states (`joint_attention_dim`); None for the other families.
    pub joint_attention_dim: Option<usize>,
    /// SD3: features of the pooled text vector (`pooled_projection_dim`).
    pub pooled_projection_dim: Option<usize>,
    /// SD3: side of the stored position table (`pos_embed_max_size`), centre-cropped per latent.
    pub pos_embed_max_size: Option<usize>,
    /// SD3.5: RMSNorm on each head of Q and K (`qk_norm: "rms_norm"`).
    pub qk_norm: bool,
    /// SD3.5 (MMDiT-X): blocks with a second, image-only attention (`dual_attention_layers`).
    pub dual_attention_layers: Vec<usize>,
    /// FLUX: single-stream blocks after the `num_layers` double-stream ones (`num_single_layers`).
    pub num_single_layers: usize,
    /// FLUX: RoPE channels per position axis (`axes_dims_rope`, summing to the head dim).
    pub axes_dims_rope: Vec<usize>,
    /// FLUX.1-dev: the guidance-distilled embedding of the guidance scale (`guidance_embeds`).
    pub guidance_embeds: bool,
}

impl ModelConfig {
    /// The hidden size, heads × head dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads.saturating_mul(self.attention_head_dim)
    }

    /// `sample_size // patch_size`: the grid the positional embedding is normalised to.
    pub fn base_size(&self) -> usize {
        (self.sample_size / self.patch_size).max(1)
    }

    /// Learned sigma: the model predicts [ε | variance], and the pipelines keep ε.
    pub fn learned_sigma(&self) -> bool {
        self.out_channels == 2 * self.in_channels
    }

    /// Reads and validates `path` (a diffusers config.json).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::Config { key, msg, .. } => Error::Config { path: path.to_path_buf(), key, msg },
            other => other,
        })
    }

    /// Parses and validates the text of a diffusers config.json (errors name `config.json` as
    /// the file and the key at fault).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| config_err(None, format!("not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| config_err(None, "not a JSON object"))?;
        let keys = Keys(obj);
        let get = |k: &str| keys.get(k);
        let usize_or = |k: &str, d: usize| keys.usize_or(k, d);
        let opt_usize = |k: &str| keys.opt_usize(k);
        let str_or = |k: &str, d: &str| keys.str_or(k, d);
        let bool_or = |k: &str, d: bool| keys.bool_or(k, d);
        let f64_of = |k: &str| keys.f64_of(k);

        let class = match get("_class_name") {
            None => return Err(config_err(Some("_class_name"), "missing")),
            Some(_) => str_or("_class_name", "")?,
        };
        // The registry of class names: a family with its own config keys parses them itself.
        if class == Family::Sd3.name() {
            let cfg = crate::model::families::sd3::config_from_keys(&keys)?;
            cfg.validate()?;
            return Ok(cfg);
        }
        if class == Family::Flux.name() {
            let cfg = crate::model::families::flux::config_from_keys(&keys)?;
            cfg.validate()?;
            return Ok(cfg);
        }
        let norm_type_default = match class.as_str() {
            "DiTTransformer2DModel" => "ada_norm_zero",
            _ => "ada_norm_single",
        };
        let norm_type = str_or("norm_type", norm_type_default)?;
        let family = match class.as_str() {
            "PixArtTransformer2DModel" => Family::PixArt,
            "DiTTransformer2DModel" => Family::DiT,
            // The Hub stores both as Transformer2DModel; diffusers remaps by norm_type.
            "Transformer2DModel" => match norm_type.as_str() {
                "ada_norm_single" => Family::PixArt,
                "ada_norm_zero" => Family::DiT,
                other => return Err(Error::UnknownModelClass(format!("Transformer2DModel with norm_type `{other}`"))),
            },
            other => return Err(Error::UnknownModelClass(other.to_string())),
        };
        let expected_norm = match family {
            Family::DiT => "ada_norm_zero",
            _ => "ada_norm_single",
        };
        if norm_type != expected_norm {
            return Err(config_err(
                Some("norm_type"),
                format!("{} needs `{expected_norm}`, found `{norm_type}`", family.name()),
            ));
        }
        let act = str_or("activation_fn", "gelu-approximate")?;
        if act != "gelu-approximate" {
            return Err(config_err(Some("activation_fn"), format!("`{act}` is not supported (only gelu-approximate)")));
        }
        if bool_or("norm_elementwise_affine", false)? {
            return Err(config_err(Some("norm_elementwise_affine"), "true is not supported"));
        }
        let attention_type = str_or("attention_type", "default")?;
        if attention_type != "default" {
            return Err(config_err(Some("attention_type"), format!("`{attention_type}` is not supported")));
        }

        let (default_sample, default_eps) = match family {
            Family::DiT => (32, 1e-5),
            _ => (128, 1e-6),
        };
        let in_channels = usize_or("in_channels", 4)?;
        let sample_size = usize_or("sample_size", default_sample)?;
        let norm_eps = f64_of("norm_eps")?.unwrap_or(default_eps);
        let interpolation_scale = match f64_of("interpolation_scale")? {
            Some(v) => v,
            None => match family {
                Family::DiT => 1.0,
                _ => (sample_size / 64).max(1) as f64,
            },
        };
        let use_additional_conditions = match family {
            Family::PixArt => bool_or("use_additional_conditions", sample_size == 128)?,
            _ => false,
        };
        let cfg = ModelConfig {
            family,
            num_attention_heads: usize_or("num_attention_heads", 16)?,
            attention_head_dim: usize_or("attention_head_dim", 72)?,
            in_channels,
            out_channels: usize_or("out_channels", in_channels)?,
            num_layers: usize_or("num_layers", 28)?,
            patch_size: usize_or("patch_size", 2)?,
            sample_size,
            cross_attention_dim: match family {
                Family::PixArt => Some(usize_or("cross_attention_dim", 1152)?),
                _ => None,
            },
            caption_channels: match family {
                Family::PixArt => opt_usize("caption_channels")?,
                _ => None,
            },
            norm_eps: norm_eps as f32,
            interpolation_scale,
            use_additional_conditions,
            num_embeds_ada_norm: usize_or("num_embeds_ada_norm", 1000)?,
            attention_bias: bool_or("attention_bias", true)?,
            joint_attention_dim: None,
            pooled_projection_dim: None,
            pos_embed_max_size: None,
            qk_norm: false,
            dual_attention_layers: Vec::new(),
            num_single_layers: 0,
            axes_dims_rope: Vec::new(),
            guidance_embeds: false,
        };
        let _ = get;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects configs the runtime cannot run, naming the key: every constraint the model relies
    /// on is checked here, so loading and running never meet one unchecked.
    pub fn validate(&self) -> Result<()> {
        let range = |k: &str, v: usize, lo: usize, hi: usize| -> Result<()> {
            if v < lo || v > hi {
                return Err(config_err(Some(k), format!("{v} is out of range {lo}..={hi}")));
            }
            Ok(())
        };
        range("num_attention_heads", self.num_attention_heads, 1, MAX_DIM)?;
        range("attention_head_dim", self.attention_head_dim, 1, MAX_DIM)?;
        range("num_layers", self.num_layers, 1, MAX_LAYERS)?;
        range("patch_size", self.patch_size, 1, MAX_PATCH)?;
        range("in_channels", self.in_channels, 1, MAX_DIM)?;
        range("out_channels", self.out_channels, self.in_channels, MAX_DIM)?;
        range("sample_size", self.sample_size, 1, MAX_DIM)?;
        if self.family == Family::DiT {
            range("num_embeds_ada_norm", self.num_embeds_ada_norm, 1, MAX_CLASSES)?;
        }
        if let Some(c) = self.cross_attention_dim {
            range("cross_attention_dim", c, 1, MAX_DIM)?;
        }
        if let Some(c) = self.caption_channels {
            range("caption_channels", c, 1, MAX_DIM)?;
        }
        let d = self.num_attention_heads.saturating_mul(self.attention_head_dim);
        if d > MAX_DIM {
            return Err(config_err(
                Some("num_attention_heads"),
                format!("num_attention_heads × attention_head_dim = {d} exceeds {MAX_DIM}"),
            ));
        }
        // The 2-D sin-cos position embedding splits the hidden size into four equal parts.
        if !d.is_multiple_of(4) {
            return Err(config_err(
                Some("attention_head_dim"),
                format!(
                    "num_attention_heads × attention_head_dim = {} × {} = {d} must be a multiple of 4 (the 2-D position embedding's sin/cos halves per axis)",
                    self.num_attention_heads, self.attention_head_dim
                ),
            ));
        }
        if self.family == Family::PixArt && self.use_additional_conditions && !d.is_multiple_of(3) {
            return Err(config_err(
                Some("use_additional_conditions"),
                format!("the size embeddings are inner_dim / 3 wide: inner dim {d} must be a multiple of 3"),
            ));
        }
        // caption_projection maps the text to the hidden size, which attn2's K/V then read.
        if let (Some(_), Some(c)) = (self.caption_channels, self.cross_attention_dim) {
            if c != d {
                return Err(config_err(
                    Some("cross_attention_dim"),
                    format!("{c} must equal the inner dim {d}: caption_projection maps the text to the inner dim"),
                ));
            }
        }
        if !self.norm_eps.is_finite() || self.norm_eps <= 0.0 {
            return Err(config_err(Some("norm_eps"), format!("{} must be a finite number > 0", self.norm_eps)));
        }
        if !self.interpolation_scale.is_finite() || self.interpolation_scale <= 0.0 {
            return Err(config_err(
                Some("interpolation_scale"),
                format!("{} must be a finite number > 0", self.interpolation_scale),
            ));
        }
        if self.family == Family::Sd3 {
            crate::model::families::sd3::validate_config(self)?;
        }
        if self.family == Family::Flux {
            crate::model::families::flux::validate_config(self)?;
        }
        Ok(())
    }

    /// The config as diffusers would write it (presets and `info`).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "_class_name": self.family.name(),
            "num_attention_heads": self.num_attention_heads,
            "attention_head_dim": self.attention_head_dim,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "num_layers": self.num_layers,
            "patch_size": self.patch_size,
            "sample_size": self.sample_size,
            "norm_eps": self.norm_eps,
            "num_embeds_ada_norm": self.num_embeds_ada_norm,
            "attention_bias": self.attention_bias,
            "activation_fn": "gelu-approximate",
            "norm_elementwise_affine": false,
        });
        let Some(o) = v.as_object_mut() else { return v };
        match self.family {
            Family::PixArt => {
                o.insert("norm_type".into(), "ada_norm_single".into());
                o.insert("cross_attention_dim".into(), self.cross_attention_dim.into());
                o.insert("caption_channels".into(), self.caption_channels.into());
                o.insert("interpolation_scale".into(), self.interpolation_scale.into());
                o.insert("use_additional_conditions".into(), self.use_additional_conditions.into());
            }
            Family::DiT => {
                o.insert("norm_type".into(), "ada_norm_zero".into());
            }
            Family::Sd3 => return crate::model::families::sd3::config_to_json(self),
            Family::Flux => return crate::model::families::flux::config_to_json(self),
        }
        v
    }
}
