//! `linear` through cuBLASLt: `out[m, n] = act(Σ_k x[m, k]·w[n, k] + bias[n])` with bf16/f16
//! operands, f32 accumulation and scaling (CUBLAS_COMPUTE_32F, CUDA_R_32F), and the output
//! rounded once to the activation dtype after the epilogue.
//!
//! Row-major trick: a row-major `[r, c]` matrix is the column-major `[c, r]` matrix with the same
//! bytes, so `Y = X·Wᵀ` (row-major) is `Yᵀ = W·Xᵀ` in column-major terms: cuBLASLt's A is the
//! weight (stored column-major `[k, n]`, ld = k, used transposed: TRANSA = T), B is the input
//! (column-major `[k, m]`, ld = k, TRANSB = N) and D is `[n, m]` with ld = n. The bias epilogue
//! adds a vector with one value per row of D, i.e. per output feature: exactly PyTorch's bias.
//!
//! Epilogues: CUBLASLT_EPILOGUE_BIAS, _GELU and _GELU_BIAS. cuBLASLt's GELU is the tanh
//! approximation 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) — the cuBLAS documentation of
//! `cublasLtEpilogue_t` says so in the footnote to the GELU modes (cudarc's generated bindings
//! carry no doc comments, only the values GELU = 32 and GELU_BIAS = GELU | BIAS = 36) — which is
//! `Activation::GeluTanh` (diffusers' `gelu-approximate`); tests/gpu.rs checks it against the CPU
//! reference. SiLU has no epilogue: the backend runs the bias epilogue and then the SiLU kernel.
//!
//! The heuristic's algorithm is cached per (m, n, k, epilogue, dtype, pointer alignment) with its
//! descriptors, and the 32 MiB workspace is allocated once, so a GEMM enqueues exactly one
//! `cublasLtMatmul` and nothing else: capturable in a CUDA graph and cheap to replay.

use super::device::Device;
use super::error::{blas, err};
use super::exec::Op;
use super::memory::CudaBuf;
use super::probe::catch;
use crate::error::BackendErrorKind;
use crate::{DType, Result};
use cudarc::cublaslt::sys as lt;
use std::collections::HashMap;
use std::ffi::c_void;
use std::fmt;
use std::mem::MaybeUninit;
use std::ptr::addr_of;
use std::sync::Arc;

/// NVIDIA's recommendation for Hopper (4 MiB suffice before it).
pub(crate) const WORKSPACE_BYTES: usize = 32 << 20;
/// Heuristic results to look through.
const CANDIDATES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Epilogue {
    Default,
    Bias,
    Gelu,
    GeluBias,
}

impl Epilogue {
    fn lt(self) -> lt::cublasLtEpilogue_t {
        match self {
            Epilogue::Default => lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::Gelu => lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU,
            Epilogue::GeluBias => lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        }
    }

    pub fn has_bias(self) -> bool {
        matches!(self, Epilogue::Bias | Epilogue::GeluBias)
    }
}

/// What a cached plan depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GemmKey {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// the input's row stride in elements (k for a contiguous input; more when it is a column
    /// range of a wider tensor)
    pub ldx: u64,
    pub epilogue: Epilogue,
    pub dtype: DType,
    /// the smallest power-of-two alignment (≤ 256 bytes) of the four operand addresses
    pub align: u32,
}

impl GemmKey {
    /// The key as words for graph signatures.
    fn words(&self) -> [u64; 7] {
        [self.m, self.n, self.k, self.ldx, self.epilogue as u64, self.dtype as u64, self.align as u64]
    }
}

impl fmt::Display for GemmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {}]·[{}, {}]ᵀ ({}, epilogue {:?}, operands {}-byte aligned, input rows {} apart)",
            self.m, self.k, self.n, self.k, self.dtype, self.epilogue, self.align, self.ldx
        )
    }
}

/// Largest power of two (≤ 256) dividing every non-null address.
pub(crate) fn alignment(ptrs: &[u64]) -> u32 {
    ptrs.iter().filter(|&&p| p != 0).map(|p| 1u32 << p.trailing_zeros().min(8)).min().unwrap_or(256)
}

/// Descriptors and the chosen algorithm of one GEMM shape.
struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    d: lt::cublasLtMatrixLayout_t,
    algo: lt::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by the matching cuBLASLt create call (or is null when
        // creation stopped early) and is destroyed once; no queued GEMM still uses them (the
        // backend synchronises its stream before dropping the cuBLASLt state).
        unsafe {
            for l in [self.a, self.b, self.d] {
                if !l.is_null() {
                    lt::cublasLtMatrixLayoutDestroy(l);
                }
            }
            if !self.desc.is_null() {
                lt::cublasLtMatmulDescDestroy(self.desc);
            }
        }
    }
}

/// The cuBLASLt handle, preference, workspace and plan cache (behind the backend's mutex).
pub(crate) struct Blas {
    handle: lt::cublasLtHandle_t,
    pref: lt::cublasLtMatmulPreference_t,
    plans: HashMap<GemmKey, Plan>,
    workspace: CudaBuf,
    /// cublasLtGetVersion(), e.g. 130100 for 13.1.0
    pub version: usize,
}

// SAFETY: cuBLASLt handles and descriptors may be used from any thread as long as calls are not
// concurrent; `Blas` is only reachable through the backend's Mutex<Blas>.
unsafe impl Send for Blas {}

fn cuda_dtype(dtype: DType) -> Result<lt::cudaDataType> {
    match dtype {
        DType::BF16 => Ok(lt::cudaDataType::CUDA_R_16BF),
        DType::F16 => Ok(lt::cudaDataType::CUDA_R_16F),
        DType::F32 => Err(err(
            BackendErrorKind::UnsupportedDType { dtype: DType::F32 },
            "linear: the CUDA backend computes in bf16 or f16, not f32",
        )),
    }
}

/// Sets a descriptor attribute from a plain value.
///
/// # Safety
/// `desc` must be a live descriptor and `T` the attribute's C type.
unsafe fn set_desc<T>(
    desc: lt::cublasLtMatmulDesc_t,
    attr: lt::cublasLtMatmulDescAttributes_t,
    v: &T,
    what: &str,
) -> Result<()> {
    blas(lt::cublasLtMatmulDescSetAttribute(desc, attr, (v as *const T).cast(), std::mem::size_of::<T>()), || {
        format!("setting {attr:?} for {what}")
    })
}

/// # Safety
/// `pref` must be a live preference and `T` the attribute's C type.
unsafe fn set_pref<T>(
    pref: lt::cublasLtMatmulPreference_t,
    attr: lt::cublasLtMatmulPreferenceAttributes_t,
    v: &T,
) -> Result<()> {
    blas(lt::cublasLtMatmulPreferenceSetAttribute(pref, attr, (v as *const T).cast(), std::mem::size_of::<T>()), || {
        format!("setting cuBLASLt preference {attr:?}")
    })
}

impl Blas {
    pub fn new(dev: &Arc<Device>) -> Result<Self> {
        // SAFETY: only dlopen()s candidate names of libcublasLt and closes them again.
        let present = catch("looking for libcublasLt", || unsafe { lt::is_culib_present() })
            .map_err(|m| err(BackendErrorKind::Driver, m))?;
        if !present {
            return Err(err(
                BackendErrorKind::NoDevice,
                "cuBLASLt (libcublasLt.so.13) not found: install the CUDA 13 cuBLAS library (e.g. the nvidia-cublas wheel) \
                 and add the folder holding libcublasLt.so.13 to LD_LIBRARY_PATH",
            ));
        }
        // SAFETY: a plain query of the loaded library.
        let version = catch("cublasLtGetVersion", || unsafe { lt::cublasLtGetVersion() })
            .map_err(|m| err(BackendErrorKind::Driver, m))?;
        if version / 10_000 < 12 {
            return Err(err(
                BackendErrorKind::UnsupportedDevice,
                format!("cuBLASLt {version} is too old: the CUDA backend needs cuBLASLt 12 or 13"),
            ));
        }
        let workspace = dev.alloc(WORKSPACE_BYTES, &|| "the cuBLASLt workspace".into())?;
        dev.bind()?;
        // Null handles until created: Drop destroys whatever exists if a step below fails.
        let mut this = Blas {
            handle: std::ptr::null_mut(),
            pref: std::ptr::null_mut(),
            plans: HashMap::new(),
            workspace,
            version,
        };
        // SAFETY: the create calls write new handles through valid pointers; `pref` is live when
        // its attribute (a uint64_t) is set.
        unsafe {
            blas(lt::cublasLtCreate(&mut this.handle), || "cublasLtCreate".into())?;
            blas(lt::cublasLtMatmulPreferenceCreate(&mut this.pref), || "cublasLtMatmulPreferenceCreate".into())?;
            set_pref(
                this.pref,
                lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &(WORKSPACE_BYTES as u64),
            )?;
        }
        Ok(this)
    }

    fn create_plan(&self, key: GemmKey, bias: u64) -> Result<Plan> {
        let dt = cuda_dtype(key.dtype)?;
        let what = key.to_string();
        let mut plan = Plan {
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            // SAFETY: the algorithm is an opaque array of integers; all-zero is a valid value
            // (overwritten by the heuristic's choice below before use).
            algo: unsafe { std::mem::zeroed() },
        };
        use lt::cublasLtMatmulDescAttributes_t as D;
        use lt::cublasLtMatmulPreferenceAttributes_t as P;
        // SAFETY: writes a new descriptor through a valid pointer (freed by Plan's Drop).
        blas(
            unsafe {
                lt::cublasLtMatmulDescCreate(
                    &mut plan.desc,
                    lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    lt::cudaDataType::CUDA_R_32F,
                )
            },
            || format!("cublasLtMatmulDescCreate for {what}"),
        )?;
        const OP_N: i32 = 0; // CUBLAS_OP_N
        const OP_T: i32 = 1; // CUBLAS_OP_T
                             // SAFETY: `plan.desc` is live; the values have the attributes' C types: int32
                             // cublasOperation_t, uint32 cublasLtEpilogue_t, int32 cudaDataType, a device pointer.
        unsafe {
            set_desc(plan.desc, D::CUBLASLT_MATMUL_DESC_TRANSA, &OP_T, &what)?;
            set_desc(plan.desc, D::CUBLASLT_MATMUL_DESC_TRANSB, &OP_N, &what)?;
            set_desc(plan.desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE, &(key.epilogue.lt() as u32), &what)?;
            if key.epilogue.has_bias() {
                set_desc(plan.desc, D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &(dt as i32), &what)?;
                set_desc(plan.desc, D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &(bias as usize as *const c_void), &what)?;
            }
        }
        let (m, n, k) = (key.m, key.n, key.k);
        // B, the input: column-major [k, m] with its columns (the input's rows) ldx apart
        for (layout, rows, cols, ld) in [(&mut plan.a, k, n, k), (&mut plan.b, k, m, key.ldx), (&mut plan.d, n, m, n)] {
            // SAFETY: writes a new layout through a valid pointer (freed by Plan's Drop).
            blas(unsafe { lt::cublasLtMatrixLayoutCreate(layout, dt, rows, cols, ld as i64) }, || {
                format!("cublasLtMatrixLayoutCreate for {what}")
            })?;
        }
        for attr in [
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
        ] {
            // SAFETY: `self.pref` is live; the alignment attributes are uint32_t.
            unsafe { set_pref(self.pref, attr, &key.align)? };
        }
        let mut results = MaybeUninit::<[lt::cublasLtMatmulHeuristicResult_t; CANDIDATES]>::uninit();
        let base = results.as_mut_ptr().cast::<lt::cublasLtMatmulHeuristicResult_t>();
        let mut count: i32 = 0;
        // SAFETY: live handle, descriptor, layouts and preference; `base` points to room for
        // CANDIDATES results and cuBLASLt writes at most that many, reporting how many in `count`.
        blas(
            unsafe {
                lt::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    plan.desc,
                    plan.a,
                    plan.b,
                    plan.d,
                    plan.d,
                    self.pref,
                    CANDIDATES as i32,
                    base,
                    &mut count,
                )
            },
            || format!("cublasLtMatmulAlgoGetHeuristic for {what}"),
        )?;
        let written = (count.max(0) as usize).min(CANDIDATES);
        for i in 0..written {
            // SAFETY: result i < count was written by cuBLASLt. Fields are read through raw
            // pointers, the status as its raw u32 (cublasStatus_t is repr(u32)), so no value of
            // an unknown enum variant is ever materialised.
            let (state, workspace, algo) = unsafe {
                let r = base.add(i);
                (
                    addr_of!((*r).state).cast::<u32>().read(),
                    addr_of!((*r).workspaceSize).read(),
                    addr_of!((*r).algo).read(),
                )
            };
            if state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS as u32 && workspace <= WORKSPACE_BYTES {
                plan.algo = algo;
                return Ok(plan);
            }
        }
        Err(err(
            BackendErrorKind::UnsupportedLayout,
            format!("cuBLASLt has no algorithm for {what} ({written} candidates, none usable)"),
        ))
    }

    /// Enqueues `out = epilogue(x·wᵀ (+ bias))` (addresses of the operands' first elements, x's
    /// rows `key.ldx` apart; bias 0 when none).
    pub fn gemm(&mut self, dev: &Device, key: GemmKey, x: u64, w: u64, bias: u64, out: u64) -> Result<()> {
        if !self.plans.contains_key(&key) {
            dev.bind()?;
            let plan = self.create_plan(key, bias)?;
            self.plans.insert(key, plan);
        }
        let Some(plan) = self.plans.get(&key) else {
            return Err(err(BackendErrorKind::Driver, format!("cuBLASLt plan for {key} vanished")));
        };
        let mut st = dev.exec();
        if !st.enqueue("linear", Op::Gemm { key: key.words(), ptrs: [x, w, bias, out] })? {
            return Ok(());
        }
        dev.bind()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: `plan` holds live descriptors for exactly these sizes, dtype and epilogue; the
        // bias pointer attribute is a device address. x, w, bias and out are live device
        // allocations of [m, k], [n, k], [n] and [m, n] elements (checked by shapes::linear; the
        // plan's layouts describe exactly those extents; x's rows key.ldx apart, inside its
        // tensor as shapes::linear_cols checks), `out` doubles as C, which beta = 0 keeps
        // from being read. alpha and beta are host f32 scalars (the default pointer mode and the
        // CUDA_R_32F scale type) read during the call. The workspace is our own 32 MiB buffer,
        // used only by GEMMs on this one stream, so consecutive GEMMs never share it
        // concurrently. Buffers dropped later are freed in stream order after this GEMM.
        unsafe {
            if key.epilogue.has_bias() {
                set_desc(
                    plan.desc,
                    lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &(bias as usize as *const c_void),
                    "linear",
                )?;
            }
            blas(
                lt::cublasLtMatmul(
                    self.handle,
                    plan.desc,
                    (&alpha as *const f32).cast(),
                    w as usize as *const c_void,
                    plan.a,
                    x as usize as *const c_void,
                    plan.b,
                    (&beta as *const f32).cast(),
                    out as usize as *const c_void,
                    plan.d,
                    out as usize as *mut c_void,
                    plan.d,
                    &plan.algo,
                    self.workspace.device_ptr() as usize as *mut c_void,
                    WORKSPACE_BYTES,
                    dev.cu_stream().cast(),
                ),
                || format!("cublasLtMatmul {key}"),
            )
        }
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in `new`, destroyed once; the backend synchronised the stream before
        // dropping the cuBLASLt state, so no queued GEMM uses them.
        unsafe {
            if !self.pref.is_null() {
                lt::cublasLtMatmulPreferenceDestroy(self.pref);
            }
            if !self.handle.is_null() {
                lt::cublasLtDestroy(self.handle);
            }
        }
    }
}
