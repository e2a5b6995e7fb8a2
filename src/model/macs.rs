//! Multiply-accumulate counts of a forward, for `info` and the latency table (MACs saved by a
//! cache policy are block MACs not spent).

use super::{Family, ModelConfig};

/// MAC counts of one forward at a given batch and latent size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardMacs {
    /// one block, whole batch
    pub per_block: f64,
    /// patch embedding, conditioning, final layer (whole batch, per step)
    pub outside_blocks: f64,
    /// once per run: caption projection and the text K/V of every block
    pub per_run: f64,
}

impl ForwardMacs {
    pub fn new(cfg: &ModelConfig, batch: usize, height: usize, width: usize, text_len: usize) -> Self {
        let (b, d) = (batch as f64, cfg.inner_dim() as f64);
        let p = cfg.patch_size;
        let t = ((height / p) * (width / p)) as f64;
        let l = text_len as f64;
        let mut block = t * d * 3.0 * d // fused QKV
            + 2.0 * t * t * d // QKᵀ and P·V
            + t * d * d // attention out
            + 2.0 * t * d * 4.0 * d; // MLP
        let mut outside = t * (cfg.in_channels * p * p) as f64 * d // patch embedding
            + t * d * (p * p * cfg.out_channels) as f64 // proj_out
            + 256.0 * d + d * d; // timestep MLP (per sample, ×b below)
        let mut per_run = 0.0;
        match cfg.family {
            Family::PixArt => {
                block += t * d * d * 2.0 + 2.0 * t * l * d; // cross q, out and attention
                outside += d * 6.0 * d; // adaln_single.linear
                let c = cfg.cross_attention_dim.unwrap_or(cfg.inner_dim()) as f64;
                per_run += cfg.num_layers as f64 * l * c * 2.0 * d;
                if let Some(cc) = cfg.caption_channels {
                    per_run += l * (cc as f64 * d + d * d);
                }
            }
            Family::DiT => {
                block += d * 6.0 * d; // per-block adaLN-Zero modulation (per sample)
                outside += d * 2.0 * d; // proj_out_1
            }
            Family::Flux => {
                // Double blocks: both streams' projections and MLPs (12·d² a token), the joint
                // attention over j = t + l tokens, both streams' modulation. Single blocks: QKV,
                // proj_mlp and proj_out (12·d² a token) over j tokens, attention, one modulation.
                // per_block is their average (a step's MACs scale with the blocks run).
                let j = t + l;
                let double = 12.0 * j * d * d + 2.0 * j * j * d + 12.0 * d * d;
                let single = 12.0 * j * d * d + 2.0 * j * j * d + 3.0 * d * d;
                let (nd, ns) = (cfg.num_layers as f64, cfg.num_single_layers as f64);
                block = (nd * double + ns * single) / (nd + ns);
                outside += d * 2.0 * d; // norm_out
                if cfg.guidance_embeds {
                    outside += 256.0 * d + d * d; // guidance MLP
                }
                per_run += l * cfg.joint_attention_dim.unwrap_or(0) as f64 * d
                    + cfg.pooled_projection_dim.unwrap_or(0) as f64 * d
                    + d * d;
            }
            _ => {
                // MMDiT (SD3): the context stream's own projections and MLP, the joint attention
                // over t + l tokens instead of t, the modulation of both streams.
                let j = t + l;
                block += l * d * 3.0 * d + l * d * d + 2.0 * l * d * 4.0 * d;
                block += 2.0 * (j * j - t * t) * d;
                block += d * 12.0 * d;
                if !cfg.dual_attention_layers.is_empty() {
                    let share = cfg.dual_attention_layers.len() as f64 / cfg.num_layers as f64;
                    block += share * (t * d * 4.0 * d + 2.0 * t * t * d + 3.0 * d * d);
                }
                outside += d * 2.0 * d + cfg.pooled_projection_dim.unwrap_or(0) as f64 * d;
                per_run += l * cfg.joint_attention_dim.unwrap_or(0) as f64 * d;
            }
        }
        ForwardMacs { per_block: block * b, outside_blocks: outside * b, per_run: per_run * b }
    }

    /// MACs of a step that evaluates `blocks` full blocks.
    pub fn step(&self, blocks: usize) -> f64 {
        self.outside_blocks + self.per_block * blocks as f64
    }
}
