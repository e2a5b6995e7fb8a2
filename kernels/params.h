/*
 * Kernel parameter structs: the one contract between kernels/*.cu and Rust.
 *
 * Every kernel takes exactly one of these structs by value. The Rust mirror
 * (src/backend/params.rs) is generated from this file by bindgen and committed;
 * tests/bindings.rs regenerates it and fails when it differs.
 *
 * Pointers hold device addresses on a GPU and host addresses under the SIMT shim.
 * `void*` activations have the element type named by the kernel's suffix
 * (`_bf16`, `_f16`); `float*` ones are always f32. Tensors are row-major and
 * contiguous unless a stride says otherwise; "rows" are batch * tokens.
 *
 * Launch geometry constants live next to the struct they belong to so that the
 * Rust launcher (src/backend/kernels/<op>.rs) and the kernel agree on them.
 *
 * This header must stay plain C (bindgen, nvcc and g++ all read it).
 */
#ifndef DELTADIT_PARAMS_H
#define DELTADIT_PARAMS_H

#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* fill.cu — poison/initialise a buffer: x[i] = value (elem_bytes 2 or 4).    */
/* kernel: fill_u16, fill_u32; grid-stride loop                              */
/* ------------------------------------------------------------------------ */
#define FILL_THREADS 256
typedef struct FillParams {
    void* x;
    int64_t n;      /* number of elements */
    uint32_t value; /* bit pattern (low 16 bits for fill_u16) */
    int32_t _pad;
} FillParams;

/* copy_rows_u16, copy_rows_u32: a block of rows × cols elements of a row-  */
/* major matrix copied: dst[r * dst_ld + c] = src[r * src_ld + c] (src and  */
/* dst point at the block's first element; the blocks do not overlap).      */
/* Gathers strided column ranges (FLUX's Q|K|V columns of the fused single- */
/* block projection) into a joint buffer. Grid-stride loop, FILL_THREADS.   */
typedef struct CopyRowsParams {
    const void* src;
    void* dst;
    int64_t rows;
    int64_t cols;
    int64_t src_ld;
    int64_t dst_ld;
} CopyRowsParams;

/* ------------------------------------------------------------------------ */
/* norm_modulate.cu — y = LayerNorm(x) * (1 + scale[b]) + shift[b]            */
/* LayerNorm without affine parameters, biased variance, f32 statistics.      */
/* shift/scale of sample b = row / tokens are rows `shift_row`/`scale_row` of  */
/* modv + b * mod_batch_stride (each row `dim` elements long).               */
/* kernels: norm_modulate_{bf16,f16}, norm_modulate_stream_{bf16,f16}       */
/* A row is handled by `row_threads` threads (a multiple of 32 dividing      */
/* NORM_THREADS) that keep it in registers: up to NORM_VEC_SLOTS 16-byte      */
/* vectors per thread when dim % 8 == 0, else NORM_SCALAR_SLOTS elements;     */
/* longer rows loop over global memory. The launcher picks the smallest      */
/* row_threads whose slots hold the row; grid ceil(rows / rows_per_cta) with  */
/* rows_per_cta = NORM_THREADS / row_threads.                                */
/* norm_modulate_stream_{bf16,f16}: the one-warp-a-row vector case (dim % 8 */
/* == 0, dim <= 32 * 8 * NORM_VEC_SLOTS): each warp loops over rows (grid-   */
/* stride) with its next NORM_STAGES rows in flight through cp.async into a  */
/* shared-memory ring: dynamic smem NORM_THREADS / 32 * NORM_STAGES * dim * 2 */
/* bytes, grid ceil(rows / (NORM_THREADS / 32 * NORM_STREAM_ROWS_PER_WARP)), */
/* row_threads 32. At most NORM_STREAM_MIN_BLOCKS CTAs' worth of registers.   */
/* Measured at [8192, 1152] bf16 (H200): one row a warp with a 1-deep ring    */
/* beat deeper rings and more rows a warp (those serialise each warp).       */
/* ------------------------------------------------------------------------ */
#define NORM_THREADS 256
#define NORM_VEC_SLOTS 6
#define NORM_SCALAR_SLOTS 16
#define NORM_STAGES 1
#define NORM_STREAM_ROWS_PER_WARP 1
#define NORM_STREAM_MIN_BLOCKS 4
typedef struct NormModulateParams {
    const void* x;            /* [rows, dim] */
    void* y;                  /* [rows, dim] */
    const void* modv;         /* [batch, mod_rows, dim] */
    int64_t rows;
    int64_t tokens;           /* rows per sample */
    int64_t mod_batch_stride; /* elements between samples in modv */
    int32_t dim;
    int32_t shift_row;
    int32_t scale_row;
    float eps;
    int32_t row_threads;      /* threads per row: 32, 64, 128 or NORM_THREADS */
    int32_t _pad;
} NormModulateParams;

/* ------------------------------------------------------------------------ */
/* qk_norm.cu — RMSNorm of each attention head of Q and K, in place (SD3.5 /  */
/* FLUX attn.norm_q, attn.norm_k: diffusers RMSNorm(head_dim, eps) with a    */
/* weight). For row r < rows, t in {Q, K} and head h < heads, the head_dim   */
/* elements v at column col_t + h * head_dim of row r become                 */
/*   v * (1 / sqrt(mean(v^2) + eps)) * w_t      (f32, rounded once)           */
/* with (col_t, w_t) = (q_col, wq) and (k_col, wk); the two column ranges are */
/* disjoint (checked by the launcher). kernels: qk_norm_{bf16,f16}.           */
/* One item = one (row, t, head), items ordered row, t, head (consecutive    */
/* items are adjacent in memory). An item is owned by a group of              */
/* `group_lanes` lanes of one warp (a power of two dividing 32):             */
/*   vector path (head_dim % 8 == 0, head_dim <= 8 * 32, row_stride, q_col,  */
/*     k_col multiples of 8, 16-byte aligned x, wq, wk): lane j of the group  */
/*     holds 16-byte chunk j of the head in registers; group_lanes = head_dim */
/*     / 8 rounded up to a power of two (64 -> 8 lanes, 4 heads a warp; 128   */
/*     -> 16 lanes; 256 -> 32);                                               */
/*   scalar path (any other head dim or layout): two passes over the head in  */
/*     global memory (the second hits L1), any group_lanes (the launcher     */
/*     gives 32).                                                             */
/* Grid-stride over items in warp-uniform steps: grid <= ceil(items /         */
/* (QK_NORM_THREADS / group_lanes)) blocks of QK_NORM_THREADS threads.        */
/* RoPE (FLUX; rope != NULL, head_dim even): after the norm, still in f32,    */
/* each adjacent pair (a, b) = v[2i], v[2i+1] of row r becomes                */
/*   (a*cos - b*sin, b*cos + a*sin)   each product and sum rounded (no FMA)   */
/* with (cos, sin) = rope[pos * head_dim + 2i + {0, 1}], pos = rope_offset +  */
/* r % rope_tokens (the launcher checks the table holds those positions).     */
/* ------------------------------------------------------------------------ */
#define QK_NORM_THREADS 256
typedef struct QkNormParams {
    void* x;                  /* [rows, row_stride], updated in place */
    const void* wq;           /* [head_dim] */
    const void* wk;           /* [head_dim] */
    int64_t rows;
    int64_t row_stride;       /* elements between rows (the tensor's width) */
    int64_t q_col;            /* first column of Q's heads */
    int64_t k_col;            /* first column of K's heads */
    int32_t heads;
    int32_t head_dim;
    int32_t group_lanes;      /* lanes a (row, head): 1, 2, 4, 8, 16 or 32 */
    float eps;
    const float* rope;        /* [positions, head_dim] (cos, sin) pairs, or NULL: no RoPE */
    int64_t rope_tokens;      /* rows per sample (row r at position rope_offset + r % rope_tokens) */
    int64_t rope_offset;      /* position of each sample's first row */
} QkNormParams;

/* ------------------------------------------------------------------------ */
/* residual.cu — gated residual with the fused Δ-cache store:              */
/*   x = x + gate[b] ⊙ y            (gate = row gate_row of modv; modv NULL:  */
/*                                   no gate, plain x = x + y)                */
/* then, by kernel variant:                                                  */
/*   residual_plain_*  : nothing more                                        */
/*   residual_anchor_* : cache = x           (remember the range's input)    */
/*   residual_delta_*  : cache = x - cache   (Δ = range output - its input)  */
/* The Δ apply of a cached step is residual_plain with y = Δ and no gate.     */
/* terms > 0: y is a forecast, y = Σ_{j<terms} coef[j]·t_j with t_0 = y,     */
/* computed in f32 in the same pass (FORA's branch outputs forecast by       */
/* TaylorSeer, gated as this step's gates say; see forecast.cu).             */
/* kernels: residual_{plain,anchor,delta}_{bf16,f16}                         */
/* grid-stride over 8-element vectors (dim % 8 == 0) or elements,            */
/* RESIDUAL_THREADS threads per block                                        */
/* ------------------------------------------------------------------------ */
#define RESIDUAL_THREADS 256
typedef struct ResidualParams {
    void* x;                  /* [rows, dim], updated in place */
    const void* y;            /* [rows, dim] */
    const void* modv;         /* [batch, mod_rows, dim] or NULL */
    void* cache;              /* [rows, dim] or NULL (plain) */
    int64_t rows;
    int64_t tokens;
    int64_t mod_batch_stride;
    int32_t dim;
    int32_t gate_row;
    const void* t1;           /* [rows, dim] when terms >= 2, else NULL */
    const void* t2;           /* [rows, dim] when terms == 3, else NULL */
    const float* coef;        /* [terms] when terms > 0, else NULL */
    int32_t terms;            /* 0: y as is; 1..FORECAST_MAX_TERMS: the forecast */
} ResidualParams;

/* ------------------------------------------------------------------------ */
/* elementwise.cu: every kernel is a grid-stride loop of EW_THREADS-thread  */
/* blocks (8-element vectors where the row length allows, else elements).    */
/* ------------------------------------------------------------------------ */
#define EW_THREADS 256
/* activation_{gelu_tanh,silu}_{bf16,f16}: y[r, c] = act(x[r, c] + bias[c])  */
/* for the n / cols rows r and c < cols, rows ld elements apart in x and y  */
/* (ld = cols: contiguous; ld > cols: a column range of a wider tensor, as  */
/* the MLP columns of FLUX's fused single-block projection). bias may be    */
/* NULL; x and y may alias. GELU is the tanh approximation.                  */
typedef struct ActivationParams {
    const void* x;
    void* y;
    const void* bias;         /* [cols] or NULL */
    int64_t n;                /* total elements (rows * cols) */
    int64_t cols;
    int64_t ld;               /* row stride of x and y in elements (>= cols) */
} ActivationParams;

/* add_bcast_{bf16,f16}: x[r, c] += y[c] for r < rows, c < cols (in place).  */
/* Used for the PixArt modulation table and the positional embedding.       */
typedef struct AddBcastParams {
    void* x;                  /* [rows, cols] */
    const void* y;            /* [cols] */
    int64_t rows;
    int64_t cols;
} AddBcastParams;

/* timestep_embedding_{bf16,f16}: out[b, :] = sinusoid(t[b]) of width dim,   */
/* diffusers get_timestep_embedding: half = dim/2,                           */
/* e_k = exp(-ln(max_period) * k / (half - shift)), a = t * e_k,             */
/* flip_sin_to_cos ? [cos a | sin a] : [sin a | cos a] (dim even).           */
typedef struct TimestepEmbedParams {
    const float* t;           /* [batch] */
    void* out;                /* [batch, dim] */
    int32_t batch;
    int32_t dim;
    int32_t flip_sin_to_cos;
    float downscale_freq_shift;
    float max_period;
    int32_t _pad;
} TimestepEmbedParams;

/* patchify_{bf16,f16}: f32 latents [B, C, H, W] -> patches [B, (H/p)(W/p),  */
/* C*p*p] in the conv weight's order: out[b, i*w + j, (c*p + kh)*p + kw] =    */
/* x[b, c, i*p + kh, j*p + kw].                                               */
typedef struct PatchifyParams {
    const float* x;
    void* out;
    int32_t batch, channels, height, width, patch;
    int32_t _pad;
} PatchifyParams;

/* unpatchify_{bf16,f16}: tokens [B, h*w, p*p*C] -> f32 [B, C, h*p, w*p],     */
/* out[b, c, i*p + pp, j*p + q] = x[b, i*w + j, (pp*p + q)*C + c].            */
typedef struct UnpatchifyParams {
    const void* x;
    float* out;
    int32_t batch, channels, h, w, patch;
    int32_t _pad;
} UnpatchifyParams;

/* cfg_combine_f32: guided ε from the model output [n_out, C_out, HW] (f32):  */
/*   cfg = 1: eps[b] = u + scale * (c - u) with c, u the cond/uncond rows:   */
/*            cond_first = 1 (DiT [cond, null]): c = b, u = b + batch;       */
/*            cond_first = 0 (PixArt [uncond, cond]): u = b, c = b + batch.  */
/*   cfg = 0: eps[b] = out[b].                                               */
/* Only the first `channels` channels are written (the learned-sigma split). */
typedef struct CfgParams {
    const float* out;         /* [(cfg ? 2 : 1) * batch, channels_out, hw] */
    float* eps;               /* [batch, channels, hw] */
    int32_t batch;
    int32_t channels;
    int32_t channels_out;
    int32_t hw;
    int32_t cfg;
    int32_t cond_first;
    float scale;
    int32_t _pad;
} CfgParams;

/* ------------------------------------------------------------------------ */
/* scheduler.cu — scheduler_step_f32: one fused update of the f32 latents.    */
/* kind selects the formula; coefficients are computed on the host in f32    */
/* exactly as diffusers orders them (see src/sampler/):                      */
/*   SCHED_DPM1  x0 = (x - c0*eps) / c1;  x = c2*x - c3*x0                    */
/*   SCHED_DPM2  x0 = (x - c0*eps) / c1;  d1 = c4*(x0 - x0_prev);             */
/*               x = c2*x - c3*x0 - c5*d1                                     */
/*   SCHED_DDIM  x0 = (x - c0*eps) / c1;  x = c2*x0 + c3*eps                  */
/*   SCHED_LCM   x0 = (x - c0*eps) / c1;  den = c2*x0 + c3*x;                  */
/*               x = noise ? c4*den + c5*noise : den                          */
/*   SCHED_FLOW_EULER  flow matching (diffusers FlowMatchEulerDiscrete-      */
/*               Scheduler.step, eps = the predicted velocity):               */
/*               x0 = x - c1*eps  (c1 = sigma: the clean-sample estimate);    */
/*               x = x + c0*eps   (c0 = sigma_next - sigma)                    */
/* Every kind then stores x0_prev = x0 (when x0_prev is not NULL).           */
/* DPM2 without x0_prev reads NaN for it. Grid-stride over float4 vectors.   */
/* ------------------------------------------------------------------------ */
#define SCHED_THREADS 256
#define SCHED_DPM1 0
#define SCHED_DPM2 1
#define SCHED_DDIM 2
#define SCHED_LCM 3
#define SCHED_FLOW_EULER 4
typedef struct SchedulerStepParams {
    float* x;                 /* [n] latents, updated in place */
    const float* eps;         /* [n] guided model output */
    float* x0_prev;           /* [n] previous x0 (read by DPM2), then overwritten; may be NULL */
    const float* noise;       /* [n] LCM noise or NULL */
    int64_t n;
    int32_t kind;
    float c[6];
    int32_t _pad;
} SchedulerStepParams;

/* ------------------------------------------------------------------------ */
/* forecast.cu — forecast_{bf16,f16}: the calibrated Δ apply and the         */
/* TaylorSeer ladder update of cached quantities, one pass:                  */
/*   x = (accumulate ? x : 0) + sum_{i < terms} coef[i] * t_i               */
/* in f32, rounded once. coef is f32 on the device (its values change per    */
/* step; a captured graph reads them). Grid-stride over 8-element vectors    */
/* (n % 8 == 0) or elements, FORECAST_THREADS threads per block.             */
/* ------------------------------------------------------------------------ */
#define FORECAST_THREADS 256
#define FORECAST_MAX_TERMS 3
typedef struct ForecastParams {
    void* x;                  /* [n], updated in place */
    const void* t0;           /* [n] */
    const void* t1;           /* [n], or NULL past `terms` */
    const void* t2;           /* [n], or NULL past `terms` */
    const float* coef;        /* [terms] */
    int64_t n;
    int32_t terms;            /* 1..FORECAST_MAX_TERMS */
    int32_t accumulate;       /* 1: add to x; 0: overwrite x */
} ForecastParams;

/* ladder_update_{bf16,f16}: a full step's TaylorSeer ladder update in one  */
/* pass, per element:                                                       */
/*   cur = d0; old = prev; prev = d0                                        */
/*   for i < levels: new = coef[2i]·cur + coef[2i+1]·old                    */
/*                   old = lv_i; lv_i = round(new); cur = lv_i              */
/* (coef (1/w, −1/w) where a level becomes defined, else (0, 0)); each      */
/* level differences the rounded level below, as stored.                   */
typedef struct LadderParams {
    const void* d0;           /* [n]: the quantity this full step stored */
    void* prev;               /* [n]: d0 at the last full step, replaced by d0 */
    void* lv0;                /* [n]: d_1 */
    void* lv1;                /* [n]: d_2, or NULL with levels == 1 */
    const float* coef;        /* [2 * levels] */
    int64_t n;
    int32_t levels;           /* 1..FORECAST_MAX_TERMS - 1 */
    int32_t _pad;
} LadderParams;

/* ------------------------------------------------------------------------ */
/* rel_l1.cu — rel_l1_{bf16,f16,f32}: the two sums of a relative-L1 probe   */
/* for cache policies, Σ|a - b| and Σ|b|, as per-block f32 partials          */
/* partial[2 * block + {0, 1}], which the launcher sums in a fixed order:    */
/* no atomics, so a probe gives the same value on every run. Grid-stride,    */
/* at most REL_L1_MAX_BLOCKS blocks of REL_L1_THREADS threads.               */
/* ------------------------------------------------------------------------ */
#define REL_L1_THREADS 256
#define REL_L1_MAX_BLOCKS 1024
typedef struct RelL1Params {
    const void* a;
    const void* b;
    float* partial;           /* [2 * gridDim.x] */
    int64_t n;
} RelL1Params;

/* ------------------------------------------------------------------------ */
/* attention.cu — fused attention (FlashAttention-2 style), non-causal.       */
/* O[b, i, h*D:(h+1)*D] = softmax_j(Q_i·K_j * scale + bias[b, j]) V_j         */
/* Q/K/V/O rows are tokens with the given row strides (elements), so Q, K    */
/* and V can be column slices of one fused QKV GEMM output; head h uses      */
/* columns [h*D, (h+1)*D) of its row. key_bias is f32 [batch, nk] with       */
/* bias_batch_stride (NULL: no bias).                                        */
/* kernels, their grids and shared memory: kernels/attention_variants.h    */
/* (grid (ceil(nq / queries a CTA), heads, batch)).                          */
/* Q, K, V, O: 16-byte aligned base pointers, row strides multiples of 8     */
/* elements (cp.async and the output stores move 16-byte chunks).            */
/* ------------------------------------------------------------------------ */
typedef struct AttentionParams {
    const void* q;
    const void* k;
    const void* v;
    void* o;
    const float* key_bias;
    int64_t q_row_stride, k_row_stride, v_row_stride, o_row_stride;
    int64_t q_batch_stride, k_batch_stride, v_batch_stride, o_batch_stride;
    int64_t bias_batch_stride;
    int32_t batch, heads, nq, nk;
    float scale_log2;         /* softmax scale * log2(e): exp2 with the scale folded in */
    int32_t _pad;
} AttentionParams;

#endif /* DELTADIT_PARAMS_H */
