//! Host-side tables computed once per shape: the 2-D sincos positional embedding and the text
//! mask bias (MODEL_SPEC.md §2.0, §2.1).

/// diffusers `get_2d_sincos_pos_embed(dim, (h, w), base_size, interpolation_scale)`, `[h·w, dim]`
/// row-major (token k = i·w + j). Grid coordinates in f32 as torch computes them, the sinusoid in
/// f64, rounded to f32 at the end. Channels [0, dim/2) encode the column coordinate, the rest
/// the row coordinate.
///
/// `dim` must be a multiple of 4 (the config check guarantees it); an error otherwise.
pub fn pos_embed_2d(
    dim: usize,
    h: usize,
    w: usize,
    base_size: usize,
    interpolation_scale: f64,
) -> crate::Result<Vec<f32>> {
    if !dim.is_multiple_of(4) {
        return Err(crate::Error::param("inner dim", dim, "a multiple of 4 (the 2-D position embedding)"));
    }
    let axis = |n: usize| -> Vec<f64> {
        let step = (n as f64 / base_size as f64) as f32;
        let s = interpolation_scale as f32;
        (0..n).map(|i| ((i as f32 / step) / s) as f64).collect()
    };
    let (gh, gw) = (axis(h), axis(w));
    let half = dim / 2; // per axis
    let quarter = half / 2; // sin or cos part of one axis
    let omega: Vec<f64> = (0..quarter).map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64)).collect();
    let mut out = vec![0.0f32; h * w * dim];
    for i in 0..h {
        for j in 0..w {
            let row = &mut out[(i * w + j) * dim..][..dim];
            for (axis_idx, pos) in [gw[j], gh[i]].into_iter().enumerate() {
                let base = axis_idx * half;
                for (k, &om) in omega.iter().enumerate() {
                    let a = pos * om;
                    row[base + k] = a.sin() as f32;
                    row[base + quarter + k] = a.cos() as f32;
                }
            }
        }
    }
    Ok(out)
}

/// `(1 − mask)·(−10000)` in f32: the additive key bias diffusers builds from a 0/1 text mask.
pub fn mask_to_bias(mask: &[f32]) -> Vec<f32> {
    mask.iter().map(|&m| (1.0 - m) * -10000.0).collect()
}

/// diffusers `get_timestep_embedding` on the host (f32, op by op), for the micro-conditions that
/// are fixed for a whole run.
pub fn sinusoid(values: &[f32], dim: usize, flip_sin_to_cos: bool, shift: f32) -> Vec<f32> {
    let mut out = vec![0.0; values.len() * dim];
    crate::backend::cpu::timestep_embedding_f32(values, dim, flip_sin_to_cos, shift, &mut out);
    out
}
