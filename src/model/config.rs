//! Model configuration from a diffusers `config.json`, with the defaults diffusers derives when
//! keys are absent (MODEL_SPEC.md §1 and §4).

use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Which transformer the checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `PixArtTransformer2DModel` (adaLN-single, cross-attention to T5 text).
    PixArt,
    /// `DiTTransformer2DModel` (adaLN-Zero, class labels).
    DiT,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::PixArt => "PixArtTransformer2DModel",
            Family::DiT => "DiTTransformer2DModel",
        }
    }
}

/// Everything the runtime needs from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    pub patch_size: usize,
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
    pub attention_bias: bool,
}

impl ModelConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
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
            Error::Config { msg, .. } => Error::Config { path: path.to_path_buf(), msg },
            other => other,
        })
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg_err = |msg: String| Error::Config { path: "config.json".into(), msg };
        let v: Value = serde_json::from_str(text).map_err(|e| cfg_err(format!("not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| cfg_err("not a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let usize_or = |k: &str, d: usize| -> Result<usize> {
            match get(k) {
                None => Ok(d),
                Some(v) => v
                    .as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| cfg_err(format!("`{k}` must be a non-negative integer, found {v}"))),
            }
        };
        let opt_usize = |k: &str| -> Result<Option<usize>> {
            match get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|x| Some(x as usize))
                    .ok_or_else(|| cfg_err(format!("`{k}` must be an integer or null, found {v}"))),
            }
        };
        let str_or = |k: &str, d: &str| -> String { get(k).and_then(Value::as_str).unwrap_or(d).to_string() };

        let class = get("_class_name").and_then(Value::as_str).unwrap_or("").to_string();
        let norm_type_default = match class.as_str() {
            "DiTTransformer2DModel" => "ada_norm_zero",
            _ => "ada_norm_single",
        };
        let norm_type = str_or("norm_type", norm_type_default);
        let family = match class.as_str() {
            "PixArtTransformer2DModel" => Family::PixArt,
            "DiTTransformer2DModel" => Family::DiT,
            // The Hub stores both as Transformer2DModel; diffusers remaps by norm_type.
            "Transformer2DModel" => match norm_type.as_str() {
                "ada_norm_single" => Family::PixArt,
                "ada_norm_zero" => Family::DiT,
                other => return Err(Error::UnknownModelClass(format!("Transformer2DModel with norm_type `{other}`"))),
            },
            "" => return Err(cfg_err("no `_class_name`".into())),
            other => return Err(Error::UnknownModelClass(other.to_string())),
        };
        let expected_norm = match family {
            Family::PixArt => "ada_norm_single",
            Family::DiT => "ada_norm_zero",
        };
        if norm_type != expected_norm {
            return Err(cfg_err(format!("{} needs norm_type `{expected_norm}`, found `{norm_type}`", family.name())));
        }
        let act = str_or("activation_fn", "gelu-approximate");
        if act != "gelu-approximate" {
            return Err(cfg_err(format!("activation_fn `{act}` is not supported (only gelu-approximate)")));
        }
        if get("norm_elementwise_affine").and_then(Value::as_bool).unwrap_or(false) {
            return Err(cfg_err("norm_elementwise_affine = true is not supported".into()));
        }
        let attention_type = str_or("attention_type", "default");
        if attention_type != "default" {
            return Err(cfg_err(format!("attention_type `{attention_type}` is not supported")));
        }

        let (default_sample, default_eps) = match family {
            Family::PixArt => (128, 1e-6),
            Family::DiT => (32, 1e-5),
        };
        let in_channels = usize_or("in_channels", 4)?;
        let sample_size = usize_or("sample_size", default_sample)?;
        let norm_eps = match get("norm_eps") {
            None => default_eps,
            Some(v) => v.as_f64().ok_or_else(|| cfg_err(format!("`norm_eps` must be a number, found {v}")))?,
        } as f32;
        let interpolation_scale = match get("interpolation_scale") {
            Some(v) => {
                v.as_f64().ok_or_else(|| cfg_err(format!("`interpolation_scale` must be a number, found {v}")))?
            }
            None => match family {
                Family::PixArt => (sample_size / 64).max(1) as f64,
                Family::DiT => 1.0,
            },
        };
        let use_additional_conditions = match (family, get("use_additional_conditions")) {
            (Family::DiT, _) => false,
            (Family::PixArt, Some(v)) => v
                .as_bool()
                .ok_or_else(|| cfg_err(format!("`use_additional_conditions` must be a boolean, found {v}")))?,
            (Family::PixArt, None) => sample_size == 128,
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
                Family::DiT => None,
            },
            caption_channels: match family {
                Family::PixArt => opt_usize("caption_channels")?,
                Family::DiT => None,
            },
            norm_eps,
            interpolation_scale,
            use_additional_conditions,
            num_embeds_ada_norm: usize_or("num_embeds_ada_norm", 1000)?,
            attention_bias: get("attention_bias").and_then(Value::as_bool).unwrap_or(true),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects sizes the runtime cannot run, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, v: usize, allowed: &str| Err(Error::param(k, v, allowed));
        if self.num_attention_heads == 0 {
            return bad("num_attention_heads", 0, "≥ 1");
        }
        if self.attention_head_dim == 0 {
            return bad("attention_head_dim", 0, "≥ 1");
        }
        if self.num_layers == 0 {
            return bad("num_layers", 0, "≥ 1");
        }
        if self.patch_size == 0 {
            return bad("patch_size", 0, "≥ 1");
        }
        if self.in_channels == 0 || self.out_channels < self.in_channels {
            return bad("out_channels", self.out_channels, "≥ in_channels ≥ 1");
        }
        if self.family == Family::PixArt && !self.inner_dim().is_multiple_of(3) && self.use_additional_conditions {
            return bad(
                "inner_dim",
                self.inner_dim(),
                "a multiple of 3 when use_additional_conditions (size embeddings are inner_dim/3 wide)",
            );
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
        let o = v.as_object_mut().unwrap();
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
        }
        v
    }
}
