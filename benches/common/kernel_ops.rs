//! The ops benches/kernels.rs times, as values that run on any backend: on the device under test,
//! and on the CPU backend (f32), which checks the device's output at the same shapes and on the
//! same inputs before the op is timed — a wrong kernel gets no speed (llm.c's dev/cuda pattern:
//! validate, then benchmark).

use deltadit::backend::cpu::Cpu;
use deltadit::backend::{Activation, AttentionShape, CacheWrite, Cfg, ColSlice, SchedulerUpdate};
use deltadit::internals::rel_l2;
use deltadit::{Backend, DType, Error, Result, Tensor};

/// The gated residual and its Δ-cache variants (`Backend::residual`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Residual {
    /// x += gate ⊙ y
    Gated,
    /// x += gate ⊙ y; cache = x (the Δ anchor store)
    Anchor,
    /// x += gate ⊙ y; cache = x − cache (the Δ store)
    Delta,
    /// x += y (the Δ apply: y is the cached Δ)
    Apply,
}

/// One benchmarked op; the comment of each variant lists the tensors of one input set, in order.
#[derive(Clone, Copy, Debug)]
pub enum KernelOp {
    /// [x, modv, out]: out = LN(x)·(1 + modv row 1) + modv row 0
    NormModulate,
    /// [qkv [rows, 3·heads·head_dim], wq, wk [head_dim]]: RMSNorm of every head of Q (columns
    /// from 0) and K (from heads·head_dim) in place, eps 1e-6
    QkNorm { heads: usize, head_dim: usize },
    /// [qkv, wq, wk, table f32 [offset + rows, head_dim]]: QkNorm fused with RoPE, row r at
    /// position offset + r (one sample)
    QkNormRope { heads: usize, head_dim: usize, offset: usize },
    /// [x, y, modv] (+ [cache] for Anchor and Delta); the gate is modv row 2
    Residual(Residual),
    /// [x, t_0.., coef (f32)]: x += Σ coef[i]·t_i (a calibrated Δ apply: TaylorSeer's forecast)
    ForecastApply,
    /// [x, t_0.., modv, coef (f32)]: x += gate ⊙ Σ coef[i]·t_i, the gate modv row 2 (FORA's
    /// forecast branch output in its gated residual)
    ResidualForecast,
    /// [d0, prev, level 1.., coef (f32)]: the TaylorSeer ladder update, coefficients from 0
    LadderUpdate,
    /// [x, bias, out]: out = GELU_tanh(x + bias)
    GeluBias,
    /// [x, out]
    Copy,
    /// [x, w, out] or [x, w, bias, out]: out = act(x·wᵀ + bias)
    Linear(Activation),
    /// [x, w, bias, out]: out = x[:, col..col + k]·wᵀ + bias, the input a column range of a wider
    /// tensor read in place (FLUX's single-block output projection on the MLP columns)
    LinearCols { col: usize },
    /// [x]: GELU_tanh in place on columns [col, col + cols) (FLUX's fused single-block projection)
    GeluCols { col: usize, cols: usize },
    /// [src, dst]: dst = the first dst-width columns of src's rows (the joint attention's Q|K|V
    /// gathered out of the fused single-block projection)
    CopyRows,
    /// [qkv, out]: Q, K and V are column slices of one fused projection, as in the model
    SelfAttention(AttentionShape),
    /// [q, kv, key bias (f32), out]: K and V are column slices of kv
    CrossAttention(AttentionShape),
    /// [latents (f32) [B, C, H, W], patches [B·h·w, C·p·p]] with patch size p
    Patchify(usize),
    /// [x [batch, tokens·D], position embedding [tokens·D]]: x += pos (add_bcast)
    PosEmbed,
    /// [tokens [B·h·w, p·p·C], out (f32) [B, C, H, W]] with patch size p
    Unpatchify(usize),
    /// [model output (f32) [2B, C_out, H, W], ε (f32) [B, C, H, W]]
    CfgCombine(Cfg),
    /// [x (f32), ε (f32), x0_prev (f32)], all [B, C, H, W]: the fused sampler update
    SchedulerStep(SchedulerUpdate),
}

impl KernelOp {
    /// Runs the op on one input set of backend `be`.
    pub fn apply<X: Backend>(&self, be: &X, t: &mut [Tensor<X>]) -> Result<()> {
        let n = t.len();
        match (*self, t) {
            (KernelOp::NormModulate, [x, modv, out]) => be.norm_modulate(x, modv, 0, 1, 1e-6, out),
            (KernelOp::Residual(r), [x, y, modv, rest @ ..]) => {
                let gate = if r == Residual::Apply { None } else { Some((&*modv, 2)) };
                let cache = match (r, rest) {
                    (Residual::Anchor, [c]) => CacheWrite::Anchor(c),
                    (Residual::Delta, [c]) => CacheWrite::Delta(c),
                    (Residual::Gated | Residual::Apply, []) => CacheWrite::None,
                    _ => return Err(self.arity(n)),
                };
                be.residual(x, y, gate, cache)
            }
            (KernelOp::QkNorm { heads, head_dim }, [qkv, wq, wk]) => {
                be.qk_norm(qkv, 0, heads * head_dim, heads, head_dim, wq, wk, 1e-6)
            }
            (KernelOp::QkNormRope { heads, head_dim, offset }, [qkv, wq, wk, table]) => {
                let rope = deltadit::backend::Rope { table, tokens: qkv.rows(), offset };
                be.qk_norm_rope(qkv, 0, heads * head_dim, heads, head_dim, wq, wk, 1e-6, rope)
            }
            (KernelOp::ForecastApply, [x, rest @ ..]) if rest.len() >= 2 => {
                let (coef, terms) = rest.split_last().expect("two or more");
                be.forecast(x, &terms.iter().collect::<Vec<_>>(), coef, 0, true)
            }
            (KernelOp::ResidualForecast, [x, rest @ ..]) if rest.len() >= 3 => {
                let (coef, rest) = rest.split_last().expect("three or more");
                let (modv, terms) = rest.split_last().expect("two or more");
                be.residual_forecast(x, &terms.iter().collect::<Vec<_>>(), coef, Some((modv, 2)), CacheWrite::None)
            }
            (KernelOp::LadderUpdate, [d0, prev, rest @ ..]) if rest.len() >= 2 => {
                let (coef, levels) = rest.split_last_mut().expect("two or more");
                be.ladder_update(d0, prev, &mut levels.iter_mut().collect::<Vec<_>>(), coef, 0)
            }
            (KernelOp::GeluBias, [x, bias, out]) => be.activation(x, Some(bias), Activation::GeluTanh, out),
            (KernelOp::Copy, [x, out]) => be.copy(x, out),
            (KernelOp::Linear(act), [x, w, out]) => be.linear(x, w, None, act, out),
            (KernelOp::Linear(act), [x, w, bias, out]) => be.linear(x, w, Some(bias), act, out),
            (KernelOp::LinearCols { col }, [x, w, bias, out]) => {
                be.linear_cols(ColSlice::new(x, col), w, Some(bias), Activation::None, out)
            }
            (KernelOp::GeluCols { col, cols }, [x]) => be.activation_cols(x, col, cols, Activation::GeluTanh),
            (KernelOp::CopyRows, [src, dst]) => {
                let (rows, cols) = (dst.rows(), dst.cols());
                be.copy_rows(src, (0, 0), dst, (0, 0), (rows, cols))
            }
            (KernelOp::SelfAttention(s), [qkv, out]) => {
                let d = s.heads * s.head_dim;
                be.attention(&s, ColSlice::new(qkv, 0), ColSlice::new(qkv, d), ColSlice::new(qkv, 2 * d), None, out)
            }
            (KernelOp::CrossAttention(s), [q, kv, bias, out]) => {
                let d = s.heads * s.head_dim;
                be.attention(&s, ColSlice::new(q, 0), ColSlice::new(kv, 0), ColSlice::new(kv, d), Some(bias), out)
            }
            (KernelOp::Patchify(p), [latents, out]) => be.patchify(latents, p, out),
            (KernelOp::PosEmbed, [x, pos]) => be.add_bcast(x, pos),
            (KernelOp::Unpatchify(p), [x, out]) => be.unpatchify(x, p, out),
            (KernelOp::CfgCombine(cfg), [out, eps]) => be.cfg_combine(out, cfg, eps),
            (KernelOp::SchedulerStep(u), [x, eps, x0_prev]) => be.scheduler_step(&u, x, eps, Some(x0_prev), None),
            _ => Err(self.arity(n)),
        }
    }

    fn arity(&self, n: usize) -> Error {
        Error::param(format!("bench op {self:?}"), n, "the tensors its KernelOp variant lists")
    }

    /// The tensors the op writes: what the check compares.
    pub fn outputs(&self, n: usize) -> Vec<usize> {
        match self {
            KernelOp::Residual(Residual::Anchor | Residual::Delta) => vec![0, 3],
            KernelOp::LadderUpdate => (1..n - 1).collect(),
            KernelOp::Residual(_)
            | KernelOp::ForecastApply
            | KernelOp::ResidualForecast
            | KernelOp::PosEmbed
            | KernelOp::QkNorm { .. }
            | KernelOp::QkNormRope { .. }
            | KernelOp::GeluCols { .. } => vec![0],
            KernelOp::SchedulerStep(_) => vec![0, 2],
            _ => vec![n - 1],
        }
    }

    /// The tensors the op writes without reading: poisoned with NaN before the check, so that an
    /// element the kernel never writes shows.
    pub fn write_only(&self, n: usize) -> Vec<usize> {
        match self {
            KernelOp::Residual(Residual::Anchor) => vec![3],
            KernelOp::Residual(_)
            | KernelOp::ForecastApply
            | KernelOp::ResidualForecast
            | KernelOp::LadderUpdate
            | KernelOp::PosEmbed
            | KernelOp::SchedulerStep(_)
            | KernelOp::QkNorm { .. }
            | KernelOp::QkNormRope { .. }
            | KernelOp::GeluCols { .. } => Vec::new(),
            _ => vec![n - 1],
        }
    }
}

/// The check's bound on ‖device − CPU‖/‖CPU‖ per output: a 16-bit output carries its own
/// rounding (2⁻⁹ for bf16) and its kernel's (P in bf16 for attention), well under 1e-2, which the
/// GPU tests use too; an f32 backend must match the f32 reference closely.
pub fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-5
    } else {
        1e-2
    }
}

/// Runs `op` once on `t` (one input set of backend `be`) and on the CPU backend with the same
/// inputs (downloaded from `be`, so both see the same rounded values), and returns the largest
/// relative L2 distance ‖be − cpu‖/‖cpu‖ over the tensors it writes; NaN where `be` left an
/// output element unwritten (outputs are poisoned first) or wrote a NaN.
pub fn check<B: Backend>(be: &B, cpu: &Cpu, op: KernelOp, t: &mut [Tensor<B>]) -> Result<f64> {
    for i in op.write_only(t.len()) {
        let bits = t[i].dtype().nan_bits();
        be.fill_bits(&mut t[i], bits)?;
    }
    let mut reference =
        t.iter().map(|x| cpu.upload(&be.download(x)?, x.shape(), DType::F32)).collect::<Result<Vec<_>>>()?;
    op.apply(be, t)?;
    op.apply(cpu, &mut reference)?;
    let mut worst = 0.0f64;
    for i in op.outputs(t.len()) {
        let e = rel_l2(&be.download(&t[i])?, &cpu.download(&reference[i])?);
        if !worst.is_nan() && (e.is_nan() || e > worst) {
            worst = e;
        }
    }
    Ok(worst)
}
