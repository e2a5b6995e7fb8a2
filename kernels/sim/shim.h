// SIMT shim: the CUDA execution model on one CPU thread, so that kernels/*.cu compile with g++
// (-DDELTADIT_SIM) and run in `cargo test` on machines without a GPU.
//
// Every CUDA thread of a block is a fiber (sched.cpp); blocks run one after another on the thread
// that called deltadit_sim_launch(), so results are deterministic. __syncthreads() is a block
// barrier over the non-exited threads; warp collectives (shuffles, votes, mma, ldmatrix) are
// per-warp barriers, so they also work inside `if (warp == 0)`. Design: SIMT_SHIM.md.
//
// Kernels get: threadIdx/blockIdx/blockDim/gridDim, warpSize, __shared__ (static, also in device
// function templates), dynamic_smem<T>() (common.cuh), __syncthreads[_count/_and/_or],
// __syncwarp, __shfl[_up/_down/_xor]_sync (any type up to 16 bytes), __ballot/__any/__all_sync,
// __match_any_sync, __reduce_*_sync, __activemask, atomics (int/unsigned/64-bit/float/double),
// __ldg & co., fast-math and bit intrinsics, min/max, __trap, the CUDA headers' host bf16/f16
// types and conversions, and the PTX helpers of kernels/ptx.cuh (mma, ldmatrix, cp.async, and
// sm_90a's wgmma with no-swizzle shared-memory descriptors).
//
// Diagnostics abandon the launch with a message naming kernel, block, thread, warp and lane:
// lanes of a warp in collectives that wait for each other (divergent warp / deadlock), a lane
// exiting while its warp waits for it, masks without the calling lane, misaligned or non-shared
// ldmatrix/cp.async addresses, cp.async/ldmatrix outside dynamic shared memory, stores into the
// red zones around dynamic shared memory (checked after each block), mma/ldmatrix in a partial
// warp, __trap(). Dynamic shared memory is 0xFF-poisoned (NaN in f32/bf16/f16) before each block;
// cp.async data lands only at the wait that completes its group.
//
// Environment: DELTADIT_SIM_ABORT=1 prints and aborts on the first failure;
// DELTADIT_SIM_WARP_ORDER=reverse|shuffle (+ DELTADIT_SIM_SEED) is the default warp order;
// DELTADIT_SIM_STACK_KB sets the fiber stack size (default 256 KiB; a 64 KiB guard below each
// stack turns an overflow into a message and abort()).
//
// Limits: static __shared__ arrays are not poisoned between blocks (they are zero at a thread's
// first launch, then keep the previous block's data); a thread spinning on memory another thread
// writes never yields (hangs); __activemask() is the set of not-yet-exited lanes; no memory
// reordering, bank conflicts or timing; launches from inside a kernel are rejected.
#pragma once

#ifndef DELTADIT_SIM
#define DELTADIT_SIM 1
#endif

// The CUDA headers give the host bf16/f16 types and vector types (uint3, dim3, float4, ...). They
// define the qualifiers through crt/host_defines.h first; we replace those below.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>
#include <vector_functions.h>

#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __forceinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Static shared memory: all fibers of a block run on one OS thread, so a per-thread static is
// per-block storage; thread_local keeps concurrent launches (Rust's test threads) apart. It is
// not re-poisoned between blocks (dynamic shared memory is).
#define __shared__ static thread_local

static constexpr int warpSize = 32;

// The C ABI (src/backend/sim/ffi.rs). 0 on success; on failure the launch is abandoned and
// deltadit_sim_last_error() (per calling thread) says why. Blocks run on the calling thread;
// launches from different threads are independent.
extern "C" int deltadit_sim_launch(const char* name, const void* params, size_t params_size, unsigned gx,
                                   unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                   size_t dyn_smem);
// The index of a registered kernel (-1: unknown), resolved once by the Rust backend, and the launch
// by that index (no name lookup per launch).
extern "C" int deltadit_sim_kernel_index(const char* name);
extern "C" int deltadit_sim_launch_index(int index, const void* params, size_t params_size, unsigned gx,
                                         unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                         size_t dyn_smem);
extern "C" const char* deltadit_sim_last_error(void);
// 0 in order, 1 reversed, 2 shuffled at every barrier (seeded): process-wide.
extern "C" void deltadit_sim_set_warp_order(int warp_order, unsigned seed);
// Shared-memory accounting (sim/smem_traffic.cpp) of the launches the calling thread makes between
// begin and end (src/backend/sim/ffi.rs mirrors the struct); end fills it and turns counting off.
struct DeltaditSimSmemStats {
    uint64_t ldmatrix_requests, ldmatrix_wavefronts, ldmatrix_ideal;  // warp instructions; wavefronts
    uint64_t cp_async_requests, cp_async_wavefronts, cp_async_ideal;  // taken / without conflicts
    uint64_t wgmma_smem_bytes;  // operand bytes wgmma read from shared memory (A by descriptor, B)
    uint64_t wgmma_macs;        // multiply-adds of wgmma (64·N·16 a warpgroup instruction)
    uint64_t mma_macs;          // multiply-adds of mma.sync (16·8·16 a warp instruction)
};
extern "C" void deltadit_sim_smem_stats_begin(void);
extern "C" void deltadit_sim_smem_stats_end(DeltaditSimSmemStats* out);

namespace deltadit_sim {
// Registration (used by DELTADIT_SIM_KERNEL in common.cuh).
void register_kernel(const char* name, size_t params_size, void (*fn)(const void*));
// Dynamic shared memory of the running block: 128-byte aligned, 0xFF-poisoned before each block.
void* dynamic_smem();

// Built-in variables of the running fiber / block. Plain __thread PODs (no TLS wrapper calls);
// the scheduler updates tl_threadIdx on every switch.
extern __thread ::uint3 tl_threadIdx;
extern __thread ::uint3 tl_blockIdx;
extern __thread ::uint3 tl_blockDim;
extern __thread ::uint3 tl_gridDim;

// Block barrier; kind 0 plain, 1 count, 2 and, 3 or (the __syncthreads_* reductions).
int syncthreads(int kind, int pred);
// Warp operations (warp.cpp). mask is the CUDA member mask.
enum ShflMode { SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_BFLY = 3 };
void shfl(int mode, unsigned mask, const void* in, void* out, unsigned size, int b, int width);
enum VoteMode { VOTE_BALLOT = 0, VOTE_ANY = 1, VOTE_ALL = 2 };
unsigned vote(int mode, unsigned mask, int pred);
void syncwarp(unsigned mask);
unsigned activemask();
unsigned match_any(unsigned mask, const void* v, unsigned size);
enum ReduceOp { RED_ADD = 0, RED_MIN, RED_MAX, RED_AND, RED_OR, RED_XOR };
uint32_t reduce(int op, int is_signed, unsigned mask, uint32_t v);
// PTX emulation (ptx_sim.cpp), used by kernels/ptx.cuh.
void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4], bool f16);
void ldmatrix(uint32_t* r, const void* row_ptr, int num, bool trans);
void cp_async_16(void* smem, const void* gmem, bool valid);
void cp_async_commit();
void cp_async_wait(int n);
void cp_async_wait_all();
// wgmma (sm_90a) emulation (wgmma_sim.cpp): shared-window address of a dynamic shared memory
// pointer (what a matrix descriptor encodes), and the wgmma.mma_async m64nNk16 family (D += A·B)
// with its fence / commit_group / wait_group. a == nullptr: A from shared memory through desc_a.
uint32_t smem_addr(const void* p);
void wgmma_fence();
void wgmma_issue(float* d, int n, const uint32_t* a, uint64_t desc_a, uint64_t desc_b, int trans_b, bool f16);
void wgmma_commit();
void wgmma_wait(int n);
// Abandon the launch with a message naming the current thread (for __trap and checks in kernels).
[[noreturn]] void fail(const char* msg);
}  // namespace deltadit_sim

#define threadIdx (::deltadit_sim::tl_threadIdx)
#define blockIdx (::deltadit_sim::tl_blockIdx)
#define blockDim (::deltadit_sim::tl_blockDim)
#define gridDim (::deltadit_sim::tl_gridDim)

// ---- barriers and warp collectives -------------------------------------------------------------
inline void __syncthreads() { ::deltadit_sim::syncthreads(0, 0); }
inline int __syncthreads_count(int p) { return ::deltadit_sim::syncthreads(1, p); }
inline int __syncthreads_and(int p) { return ::deltadit_sim::syncthreads(2, p); }
inline int __syncthreads_or(int p) { return ::deltadit_sim::syncthreads(3, p); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::deltadit_sim::syncwarp(mask); }
inline unsigned __activemask() { return ::deltadit_sim::activemask(); }

namespace deltadit_sim {
// Shuffles move the bytes of any value up to 16 bytes (float, double, __nv_bfloat162, ...).
template <typename T> inline T shfl_t(int mode, unsigned mask, const T& v, int b, int width) {
    static_assert(sizeof(T) <= 16, "shuffle of a type larger than 16 bytes");
    T r = v;
    shfl(mode, mask, &v, &r, sizeof(T), b, width);
    return r;
}
}  // namespace deltadit_sim

template <typename T> inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
    return ::deltadit_sim::shfl_t(::deltadit_sim::SHFL_IDX, mask, var, srcLane, width);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return ::deltadit_sim::shfl_t(::deltadit_sim::SHFL_UP, mask, var, (int)delta, width);
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return ::deltadit_sim::shfl_t(::deltadit_sim::SHFL_DOWN, mask, var, (int)delta, width);
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
    return ::deltadit_sim::shfl_t(::deltadit_sim::SHFL_BFLY, mask, var, laneMask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    return ::deltadit_sim::vote(::deltadit_sim::VOTE_BALLOT, mask, pred);
}
inline int __any_sync(unsigned mask, int pred) {
    return ::deltadit_sim::vote(::deltadit_sim::VOTE_ANY, mask, pred) != 0;
}
inline int __all_sync(unsigned mask, int pred) {
    return ::deltadit_sim::vote(::deltadit_sim::VOTE_ALL, mask, pred) != 0;
}
template <typename T> inline unsigned __match_any_sync(unsigned mask, T value) {
    return ::deltadit_sim::match_any(mask, &value, sizeof(T));
}
inline unsigned __reduce_add_sync(unsigned m, unsigned v) { return ::deltadit_sim::reduce(::deltadit_sim::RED_ADD, 0, m, v); }
inline int __reduce_add_sync(unsigned m, int v) { return (int)::deltadit_sim::reduce(::deltadit_sim::RED_ADD, 1, m, (uint32_t)v); }
inline unsigned __reduce_min_sync(unsigned m, unsigned v) { return ::deltadit_sim::reduce(::deltadit_sim::RED_MIN, 0, m, v); }
inline int __reduce_min_sync(unsigned m, int v) { return (int)::deltadit_sim::reduce(::deltadit_sim::RED_MIN, 1, m, (uint32_t)v); }
inline unsigned __reduce_max_sync(unsigned m, unsigned v) { return ::deltadit_sim::reduce(::deltadit_sim::RED_MAX, 0, m, v); }
inline int __reduce_max_sync(unsigned m, int v) { return (int)::deltadit_sim::reduce(::deltadit_sim::RED_MAX, 1, m, (uint32_t)v); }
inline unsigned __reduce_and_sync(unsigned m, unsigned v) { return ::deltadit_sim::reduce(::deltadit_sim::RED_AND, 0, m, v); }
inline unsigned __reduce_or_sync(unsigned m, unsigned v) { return ::deltadit_sim::reduce(::deltadit_sim::RED_OR, 0, m, v); }
inline unsigned __reduce_xor_sync(unsigned m, unsigned v) { return ::deltadit_sim::reduce(::deltadit_sim::RED_XOR, 0, m, v); }

// ---- memory ------------------------------------------------------------------------------------
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldca(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldlu(const T* p) { return *p; }
template <typename T> inline T __ldcv(const T* p) { return *p; }
template <typename T> inline void __stwb(T* p, T v) { *p = v; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }
template <typename T> inline void __stwt(T* p, T v) { *p = v; }

// Atomics are real atomics: blocks of one launch run on one OS thread, but other launches (other
// test threads) may share a buffer.
#define DELTADIT_SIM_ATOMIC_INT(T)                                                                  \
    inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }          \
    inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }          \
    inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }       \
    inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }          \
    inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }            \
    inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }          \
    inline T atomicCAS(T* p, T cmp, T v) {                                                         \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);       \
        return cmp;                                                                                \
    }                                                                                              \
    inline T atomicMax(T* p, T v) {                                                                \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                              \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED,         \
                                                       __ATOMIC_RELAXED)) {}                       \
        return old;                                                                                \
    }                                                                                              \
    inline T atomicMin(T* p, T v) {                                                                \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                              \
        while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED,         \
                                                       __ATOMIC_RELAXED)) {}                       \
        return old;                                                                                \
    }
DELTADIT_SIM_ATOMIC_INT(int)
DELTADIT_SIM_ATOMIC_INT(unsigned int)
DELTADIT_SIM_ATOMIC_INT(long long)
DELTADIT_SIM_ATOMIC_INT(unsigned long long)
#undef DELTADIT_SIM_ATOMIC_INT

namespace deltadit_sim {
// Floating-point read-modify-write through a CAS loop on the bit pattern.
template <typename F, typename U, typename Op> inline F atomic_float_rmw(F* p, F v, Op op) {
    static_assert(sizeof(F) == sizeof(U), "size");
    U* q = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(q, __ATOMIC_RELAXED), nu;
    F of;
    do {
        std::memcpy(&of, &old, sizeof(F));
        F nf = op(of, v);
        std::memcpy(&nu, &nf, sizeof(F));
    } while (!__atomic_compare_exchange_n(q, &old, nu, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return of;
}
}  // namespace deltadit_sim
inline float atomicAdd(float* p, float v) {
    return ::deltadit_sim::atomic_float_rmw<float, uint32_t>(p, v, [](float a, float b) { return a + b; });
}
inline double atomicAdd(double* p, double v) {
    return ::deltadit_sim::atomic_float_rmw<double, uint64_t>(p, v, [](double a, double b) { return a + b; });
}
inline float atomicExch(float* p, float v) {
    return ::deltadit_sim::atomic_float_rmw<float, uint32_t>(p, v, [](float, float b) { return b; });
}
inline float atomicMax(float* p, float v) {  // sm_90 has it; same NaN-free semantics as fmaxf
    return ::deltadit_sim::atomic_float_rmw<float, uint32_t>(p, v, [](float a, float b) { return fmaxf(a, b); });
}
inline float atomicMin(float* p, float v) {
    return ::deltadit_sim::atomic_float_rmw<float, uint32_t>(p, v, [](float a, float b) { return fminf(a, b); });
}
inline unsigned atomicInc(unsigned* p, unsigned lim) {
    unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &old, old >= lim ? 0u : old + 1, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {}
    return old;
}
inline unsigned atomicDec(unsigned* p, unsigned lim) {
    unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &old, (old == 0 || old > lim) ? lim : old - 1, true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}

// ---- math and bit intrinsics -------------------------------------------------------------------
// Fast-math intrinsics map to the accurate libm functions (the GPU versions are approximations;
// tests compare with tolerances).
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
inline long long __double_as_longlong(double d) { long long v; std::memcpy(&v, &d, 8); return v; }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((int64_t)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
// CUDA's global min/max overloads for integers (floats go through fminf/fmaxf or these).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- misc --------------------------------------------------------------------------------------
[[noreturn]] inline void __trap() { ::deltadit_sim::fail("__trap() called"); }
inline void __brkpt() { ::deltadit_sim::fail("__brkpt() called"); }
inline void __nanosleep(unsigned) {}
#if defined(__x86_64__)
inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
#else
inline long long clock64() { return 0; }
#endif
