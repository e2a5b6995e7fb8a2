//! Shape checks shared by every backend: each op validates its operands here once and gets the
//! sizes it needs, so the CPU reference and the kernel launchers reject the same inputs with the
//! same messages.

use super::{AttentionShape, Backend, ColSlice};
use crate::{DType, Error, Result, Tensor};

fn shape_err<B: Backend>(op: &'static str, tensor: &'static str, expected: String, t: &Tensor<B>) -> Error {
    Error::Shape { op, tensor, expected, found: t.shape().to_vec() }
}

/// Sizes of a `[batch, R·dim]` modulation tensor read for activations `[batch·tokens, dim]`.
#[derive(Clone, Copy, Debug)]
pub struct ModSizes {
    pub rows: usize,
    pub dim: usize,
    pub batch: usize,
    pub tokens: usize,
    /// elements between samples in the modulation tensor
    pub mod_stride: usize,
}

pub fn modulation<B: Backend>(
    op: &'static str,
    x: &Tensor<B>,
    modv: &Tensor<B>,
    needed_rows: &[usize],
) -> Result<ModSizes> {
    let (rows, dim) = (x.rows(), x.cols());
    let batch = modv.rows();
    let mod_stride = modv.cols();
    let max_row = needed_rows.iter().copied().max().unwrap_or(0);
    if batch == 0 || rows % batch != 0 || dim == 0 || !mod_stride.is_multiple_of(dim) || mod_stride / dim <= max_row {
        return Err(shape_err(
            op,
            "modv",
            format!("[batch, R·{dim}] with R > {max_row} and batch dividing {rows} rows"),
            modv,
        ));
    }
    if modv.dtype() != x.dtype() {
        return Err(Error::DType { op, tensor: "modv", expected: x.dtype(), found: modv.dtype() });
    }
    Ok(ModSizes { rows, dim, batch, tokens: rows / batch, mod_stride })
}

/// Sizes of a [`Backend::qk_norm`](super::Backend::qk_norm): x `[rows, width]`.
#[derive(Clone, Copy, Debug)]
pub struct QkNormSizes {
    pub rows: usize,
    pub width: usize,
}

/// Operands of a [`Backend::qk_norm`](super::Backend::qk_norm): x 2-D, Q's and K's heads inside
/// its rows and disjoint (the op writes in place), weights `[head_dim]` of x's dtype, eps ≥ 0.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm<B: Backend>(
    x: &Tensor<B>,
    q_col: usize,
    k_col: usize,
    heads: usize,
    head_dim: usize,
    wq: &Tensor<B>,
    wk: &Tensor<B>,
    eps: f32,
) -> Result<QkNormSizes> {
    const OP: &str = "qk_norm";
    if heads == 0 || head_dim == 0 {
        return Err(Error::param("qk_norm heads × head_dim", format!("{heads} × {head_dim}"), "both ≥ 1"));
    }
    if !eps.is_finite() || eps < 0.0 {
        return Err(Error::param("qk_norm eps", eps, "a finite number ≥ 0"));
    }
    if x.shape().len() != 2 {
        return Err(shape_err(OP, "x", "[rows, width]".into(), x));
    }
    let width = x.cols();
    let span = heads.checked_mul(head_dim);
    for (name, col) in [("q_col", q_col), ("k_col", k_col)] {
        if span.and_then(|s| col.checked_add(s)).is_none_or(|end| end > width) {
            return Err(shape_err(
                OP,
                "x",
                format!("[rows, ≥ {col} + {heads}·{head_dim}] ({name} {col}, {heads} heads of {head_dim})"),
                x,
            ));
        }
    }
    let span = heads * head_dim; // fits: checked above
    if q_col < k_col + span && k_col < q_col + span {
        return Err(Error::param(
            "qk_norm k_col",
            k_col,
            format!("columns disjoint from Q's [{q_col}, {}) ({heads} heads of {head_dim})", q_col + span),
        ));
    }
    for (name, w) in [("wq", wq), ("wk", wk)] {
        if w.shape() != [head_dim] {
            return Err(shape_err(OP, name, format!("[{head_dim}]"), w));
        }
    }
    same_dtype(OP, x, &[("wq", wq), ("wk", wk)])?;
    Ok(QkNormSizes { rows: x.rows(), width })
}

/// Operands of a [`Backend::qk_norm_rope`](super::Backend::qk_norm_rope): those of
/// [`qk_norm`], an even head dim, rows a whole number of samples of `rope.tokens` rows, and an
/// f32 table `[positions, head_dim]` holding positions `offset..offset + tokens`.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope<B: Backend>(
    x: &Tensor<B>,
    q_col: usize,
    k_col: usize,
    heads: usize,
    head_dim: usize,
    wq: &Tensor<B>,
    wk: &Tensor<B>,
    eps: f32,
    rope: &super::Rope<'_, B>,
) -> Result<QkNormSizes> {
    const OP: &str = "qk_norm_rope";
    let s = qk_norm(x, q_col, k_col, heads, head_dim, wq, wk, eps)?;
    if !head_dim.is_multiple_of(2) {
        return Err(Error::param("qk_norm_rope head_dim", head_dim, "an even number (RoPE rotates pairs)"));
    }
    if rope.tokens == 0 || !s.rows.is_multiple_of(rope.tokens) {
        return Err(Error::param(
            "qk_norm_rope tokens",
            rope.tokens,
            format!("≥ 1 and dividing the {} rows of x (whole samples)", s.rows),
        ));
    }
    let t = rope.table;
    let need = rope.offset.checked_add(rope.tokens);
    if t.dtype() != crate::DType::F32
        || t.shape().len() != 2
        || t.shape()[1] != head_dim
        || need.is_none_or(|n| n > t.shape()[0])
    {
        return Err(shape_err(OP, "table", format!("f32 [≥ {} + {}, {head_dim}]", rope.offset, rope.tokens), t));
    }
    Ok(s)
}

/// `[m, k] · [n, k]ᵀ (+ bias [n]) → [m, n]`; returns (m, n, k).
pub fn linear<B: Backend>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    bias: Option<&Tensor<B>>,
    out: &Tensor<B>,
) -> Result<(usize, usize, usize)> {
    if w.shape().len() != 2 {
        return Err(shape_err("linear", "weight", "[out, in]".into(), w));
    }
    let (n, k) = (w.shape()[0], w.shape()[1]);
    if x.cols() != k {
        return Err(shape_err("linear", "x", format!("[.., {k}]"), x));
    }
    let m = x.rows();
    if out.rows() != m || out.cols() != n {
        return Err(shape_err("linear", "out", format!("[{m}, {n}]"), out));
    }
    if let Some(b) = bias {
        if b.numel() != n {
            return Err(shape_err("linear", "bias", format!("[{n}]"), b));
        }
    }
    same_dtype("linear", x, &[("weight", w), ("out", out)])?;
    Ok((m, n, k))
}

/// [`linear`] with the input a column range of a wider tensor; returns (m, n, k, ldx): x's
/// columns `[x.col, x.col + k)` of rows `ldx = x.t.cols()` apart.
pub fn linear_cols<B: Backend>(
    x: &ColSlice<'_, B>,
    w: &Tensor<B>,
    bias: Option<&Tensor<B>>,
    out: &Tensor<B>,
) -> Result<(usize, usize, usize, usize)> {
    if w.shape().len() != 2 {
        return Err(shape_err("linear_cols", "weight", "[out, in]".into(), w));
    }
    let (n, k) = (w.shape()[0], w.shape()[1]);
    if x.col.checked_add(k).is_none_or(|end| end > x.t.cols()) {
        return Err(shape_err("linear_cols", "x", format!("[.., ≥ {} + {k}] (columns from {})", x.col, x.col), x.t));
    }
    let m = x.t.rows();
    if out.rows() != m || out.cols() != n {
        return Err(shape_err("linear_cols", "out", format!("[{m}, {n}]"), out));
    }
    if let Some(b) = bias {
        if b.numel() != n {
            return Err(shape_err("linear_cols", "bias", format!("[{n}]"), b));
        }
    }
    same_dtype("linear_cols", x.t, &[("weight", w), ("out", out)])?;
    Ok((m, n, k, x.t.cols()))
}

/// `act` on columns `[col, col + cols)` of x in place; returns (rows, width).
pub fn activation_cols<B: Backend>(x: &Tensor<B>, col: usize, cols: usize) -> Result<(usize, usize)> {
    if col.checked_add(cols).is_none_or(|end| end > x.cols()) {
        return Err(shape_err("activation_cols", "x", format!("[.., ≥ {col} + {cols}]"), x));
    }
    Ok((x.rows(), x.cols()))
}

/// A rows × cols block at (row, col) of src and of dst, both inside, of one dtype.
pub fn copy_rows<B: Backend>(
    src: &Tensor<B>,
    src_at: (usize, usize),
    dst: &Tensor<B>,
    dst_at: (usize, usize),
    (rows, cols): (usize, usize),
) -> Result<()> {
    for (name, t, (r, c)) in [("src", src, src_at), ("dst", dst, dst_at)] {
        let rows_ok = r.checked_add(rows).is_some_and(|end| end <= t.rows());
        let cols_ok = c.checked_add(cols).is_some_and(|end| end <= t.cols());
        if !rows_ok || !cols_ok {
            return Err(shape_err("copy_rows", name, format!("[≥ {r} + {rows}, ≥ {c} + {cols}]"), t));
        }
    }
    same_dtype("copy_rows", src, &[("dst", dst)])
}

pub fn same_dtype<B: Backend>(
    op: &'static str,
    reference: &Tensor<B>,
    others: &[(&'static str, &Tensor<B>)],
) -> Result<()> {
    for (name, t) in others {
        if t.dtype() != reference.dtype() {
            return Err(Error::DType { op, tensor: name, expected: reference.dtype(), found: t.dtype() });
        }
    }
    Ok(())
}

pub fn same_shape<B: Backend>(op: &'static str, name: &'static str, t: &Tensor<B>, like: &Tensor<B>) -> Result<()> {
    if t.rows() != like.rows() || t.cols() != like.cols() {
        return Err(shape_err(op, name, format!("{:?}", like.shape()), t));
    }
    Ok(())
}

/// Row stride and column offset of each attention operand, checked against the shape.
pub struct AttentionOperands {
    pub q_stride: usize,
    pub k_stride: usize,
    pub v_stride: usize,
}

pub fn attention<B: Backend>(
    s: &AttentionShape,
    q: &ColSlice<'_, B>,
    k: &ColSlice<'_, B>,
    v: &ColSlice<'_, B>,
    key_bias: Option<&Tensor<B>>,
    out: &Tensor<B>,
) -> Result<AttentionOperands> {
    if s.batch == 0 || s.heads == 0 || s.head_dim == 0 || s.nq == 0 || s.nk == 0 {
        return Err(Error::param("attention shape", format!("{s:?}"), "all sizes ≥ 1"));
    }
    let width = s
        .heads
        .checked_mul(s.head_dim)
        .ok_or_else(|| Error::param("attention shape", format!("{s:?}"), "heads × head_dim that fits in memory"))?;
    if !s.scale.is_finite() {
        return Err(Error::param("attention scale", s.scale, "a finite number"));
    }
    let check = |name: &'static str, c: &ColSlice<'_, B>, tokens: usize| -> Result<usize> {
        let rows_ok = s.batch.checked_mul(tokens) == Some(c.t.rows());
        let cols_ok = c.col.checked_add(width).is_some_and(|end| end <= c.t.cols());
        if !rows_ok || !cols_ok {
            return Err(shape_err(
                "attention",
                name,
                format!(
                    "[{}, ≥ {}] ({} tokens × batch {}, columns from {})",
                    s.batch * tokens,
                    c.col + width,
                    tokens,
                    s.batch,
                    c.col
                ),
                c.t,
            ));
        }
        Ok(c.t.cols())
    };
    let ops = AttentionOperands {
        q_stride: check("q", q, s.nq)?,
        k_stride: check("k", k, s.nk)?,
        v_stride: check("v", v, s.nk)?,
    };
    if out.rows() != s.batch * s.nq || out.cols() != width {
        return Err(shape_err("attention", "out", format!("[{}, {}]", s.batch * s.nq, width), out));
    }
    if let Some(b) = key_bias {
        if b.rows() != s.batch || b.cols() != s.nk {
            return Err(shape_err("attention", "key_bias", format!("[{}, {}]", s.batch, s.nk), b));
        }
        if b.dtype() != DType::F32 {
            return Err(Error::DType { op: "attention", tensor: "key_bias", expected: DType::F32, found: b.dtype() });
        }
    }
    same_dtype("attention", out, &[("q", q.t), ("k", k.t), ("v", v.t)])?;
    Ok(ops)
}

/// Latents `[B, C, H, W]` and their patches; returns (B, C, H, W).
pub fn patchify<B: Backend>(latents: &Tensor<B>, patch: usize, out: &Tensor<B>) -> Result<[usize; 4]> {
    let s = latents.shape();
    if s.len() != 4 || patch == 0 || !s[2].is_multiple_of(patch) || !s[3].is_multiple_of(patch) {
        return Err(shape_err("patchify", "latents", format!("[B, C, H, W] with H, W multiples of {patch}"), latents));
    }
    let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
    let tokens = (h / patch) * (w / patch);
    if out.rows() != b * tokens || out.cols() != c * patch * patch {
        return Err(shape_err("patchify", "out", format!("[{}, {}]", b * tokens, c * patch * patch), out));
    }
    if latents.dtype() != DType::F32 {
        return Err(Error::DType { op: "patchify", tensor: "latents", expected: DType::F32, found: latents.dtype() });
    }
    Ok([b, c, h, w])
}

/// Tokens and the f32 image they unpatchify into; returns (B, C, H, W).
pub fn unpatchify<B: Backend>(x: &Tensor<B>, patch: usize, out: &Tensor<B>) -> Result<[usize; 4]> {
    let s = out.shape();
    if s.len() != 4 || patch == 0 || !s[2].is_multiple_of(patch) || !s[3].is_multiple_of(patch) {
        return Err(shape_err("unpatchify", "out", format!("[B, C, H, W] with H, W multiples of {patch}"), out));
    }
    let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
    let tokens = (h / patch) * (w / patch);
    if x.rows() != b * tokens || x.cols() != c * patch * patch {
        return Err(shape_err("unpatchify", "x", format!("[{}, {}]", b * tokens, c * patch * patch), x));
    }
    if out.dtype() != DType::F32 {
        return Err(Error::DType { op: "unpatchify", tensor: "out", expected: DType::F32, found: out.dtype() });
    }
    Ok([b, c, h, w])
}

/// Model output `[n, C_out, H, W]` and guided ε `[batch, C, H, W]`; returns (batch, C, C_out, H·W).
pub fn cfg_combine<B: Backend>(out: &Tensor<B>, guided: bool, eps: &Tensor<B>) -> Result<[usize; 4]> {
    let (o, e) = (out.shape(), eps.shape());
    let factor = if guided { 2 } else { 1 };
    if e.len() != 4 || o.len() != 4 || o[0] != factor * e[0] || o[1] < e[1] || o[2..] != e[2..] {
        return Err(shape_err(
            "cfg_combine",
            "out",
            format!("[{}, ≥ C, H, W] for eps {:?}", factor * e.first().copied().unwrap_or(0), e),
            out,
        ));
    }
    for (name, t) in [("out", out), ("eps", eps)] {
        if t.dtype() != DType::F32 {
            return Err(Error::DType { op: "cfg_combine", tensor: name, expected: DType::F32, found: t.dtype() });
        }
    }
    Ok([e[0], e[1], o[1], e[2] * e[3]])
}

/// All operands of a scheduler update are f32 and the same size.
pub fn scheduler_step<B: Backend>(
    x: &Tensor<B>,
    eps: &Tensor<B>,
    x0_prev: Option<&Tensor<B>>,
    noise: Option<&Tensor<B>>,
) -> Result<usize> {
    let n = x.numel();
    for (name, t) in [("x", Some(x)), ("eps", Some(eps)), ("x0_prev", x0_prev), ("noise", noise)] {
        let Some(t) = t else { continue };
        if t.numel() != n {
            return Err(shape_err("scheduler_step", name, format!("{:?}", x.shape()), t));
        }
        if t.dtype() != DType::F32 {
            return Err(Error::DType { op: "scheduler_step", tensor: name, expected: DType::F32, found: t.dtype() });
        }
    }
    Ok(n)
}

/// Bytes of a new tensor; an error when the size does not fit in memory (a product of user sizes
/// could overflow).
pub fn alloc_bytes(shape: &[usize], dtype: DType) -> Result<usize> {
    shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d)).filter(|&b| b <= isize::MAX as usize).ok_or_else(
        || Error::Shape {
            op: "alloc",
            tensor: "shape",
            expected: "a size that fits in memory".into(),
            found: shape.to_vec(),
        },
    )
}

/// `data.len()` values for `dst`.
pub fn write<B: Backend>(dst: &Tensor<B>, len: usize) -> Result<()> {
    if len != dst.numel() {
        return Err(Error::Shape {
            op: "write",
            tensor: "data",
            expected: format!("{} elements", dst.numel()),
            found: vec![len],
        });
    }
    Ok(())
}

/// Bounds and dtypes of a [`Backend::copy_range`].
pub fn copy_range<B: Backend>(
    src: &Tensor<B>,
    src_off: usize,
    dst: &Tensor<B>,
    dst_off: usize,
    len: usize,
) -> Result<()> {
    for (name, t, off) in [("src", src, src_off), ("dst", dst, dst_off)] {
        match off.checked_add(len) {
            Some(end) if end <= t.numel() => {}
            _ => return Err(shape_err("copy_range", name, format!("at least {off} + {len} elements"), t)),
        }
    }
    same_dtype("copy_range", src, &[("dst", dst)])
}

/// `out = act(x + bias)`: out like x, bias one row of x, all of one dtype.
pub fn activation<B: Backend>(x: &Tensor<B>, bias: Option<&Tensor<B>>, out: &Tensor<B>) -> Result<()> {
    same_shape("activation", "out", out, x)?;
    if let Some(b) = bias {
        if b.numel() != x.cols() {
            return Err(shape_err("activation", "bias", format!("[{}]", x.cols()), b));
        }
        same_dtype("activation", x, &[("bias", b)])?;
    }
    same_dtype("activation", x, &[("out", out)])
}

/// `x[r, :] += y`: y one row of x, of x's dtype.
pub fn add_bcast<B: Backend>(x: &Tensor<B>, y: &Tensor<B>) -> Result<()> {
    if y.numel() != x.cols() {
        return Err(shape_err("add_bcast", "y", format!("[{}]", x.cols()), y));
    }
    same_dtype("add_bcast", x, &[("y", y)])
}

/// f32 timesteps `[batch]` into `[batch, dim]` with an even dim; returns (batch, dim).
pub fn timestep_embedding<B: Backend>(t: &Tensor<B>, out: &Tensor<B>) -> Result<(usize, usize)> {
    if out.rows() != t.numel() || !out.cols().is_multiple_of(2) {
        return Err(shape_err("timestep_embedding", "out", format!("[{}, even dim]", t.numel()), out));
    }
    t.expect_dtype("timestep_embedding", "t", DType::F32)?;
    Ok((t.numel(), out.cols()))
}

/// The checks of a ladder update: 1..=2 levels, `prev` and each level of `d0`'s shape and dtype,
/// `2·levels` f32 coefficients from `coef_offset`.
pub fn ladder_update<B: Backend>(
    op: &'static str,
    d0: &Tensor<B>,
    prev: &Tensor<B>,
    levels: &[&mut Tensor<B>],
    coef: &Tensor<B>,
    coef_offset: usize,
) -> Result<()> {
    if levels.is_empty() || levels.len() > 2 {
        return Err(Error::param("ladder levels", levels.len(), "1..=2"));
    }
    same_shape(op, "prev", prev, d0)?;
    same_dtype(op, d0, &[("prev", prev)])?;
    for (i, t) in levels.iter().enumerate() {
        const NAMES: [&str; 2] = ["level 1", "level 2"];
        same_shape(op, NAMES[i], t, d0)?;
        same_dtype(op, d0, &[(NAMES[i], t)])?;
    }
    if coef.dtype() != crate::DType::F32 {
        return Err(Error::DType { op, tensor: "coef", expected: crate::DType::F32, found: coef.dtype() });
    }
    let need = 2 * levels.len();
    if coef_offset.checked_add(need).is_none_or(|end| end > coef.numel()) {
        return Err(shape_err(op, "coef", format!("at least {} f32 values", coef_offset + need), coef));
    }
    Ok(())
}

/// A [`Backend::forecast`](super::Backend::forecast): 1..=3 terms of x's shape and dtype, an f32
/// `coef` holding `coef_offset + terms` values.
pub fn forecast<B: Backend>(
    op: &'static str,
    x: &Tensor<B>,
    terms: &[&Tensor<B>],
    coef: &Tensor<B>,
    coef_offset: usize,
) -> Result<()> {
    if terms.is_empty() || terms.len() > 3 {
        return Err(Error::param("forecast terms", terms.len(), "1..=3"));
    }
    for (i, t) in terms.iter().enumerate() {
        const NAMES: [&str; 3] = ["t0", "t1", "t2"];
        same_shape(op, NAMES[i], t, x)?;
        same_dtype(op, x, &[(NAMES[i], t)])?;
    }
    if coef.dtype() != crate::DType::F32 {
        return Err(Error::DType { op, tensor: "coef", expected: crate::DType::F32, found: coef.dtype() });
    }
    if coef_offset.checked_add(terms.len()).is_none_or(|end| end > coef.numel()) {
        return Err(shape_err(op, "coef", format!("at least {} f32 values", coef_offset + terms.len()), coef));
    }
    Ok(())
}
