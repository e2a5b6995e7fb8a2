// Inline-PTX helpers. Each has a GPU branch (inline asm, sm_80+) and a shim branch (kernels/sim/),
// selected by DELTADIT_SIM, never by __CUDA_ARCH__ (nvcc's host pass would see the CPU branch).
//
// Register packing: a 32-bit register holds two 16-bit values, the lower index in the low half.
// Fragment layouts of mma.m16n8k16 (lane L, g = L >> 2, t = L % 4):
//   A 16x16 row-major, a[0..3]: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 8+2t..), a3 = (g+8, 8+2t..)
//   B 16x8 ("col"), b[0..1]:    b_i = (k = 2t + 8i .. 2t + 8i + 1, n = g)
//   C/D 16x8 f32, c[0..3]:      c_i = (row g + 8 (i >= 2), col 2t + (i & 1))
// ldmatrix: lane L gives the address of row L % 8 of matrix L / 8 (16-byte rows, 16-byte aligned,
// shared memory); register j = matrix j, row L/4, cols 2(L%4), 2(L%4)+1 (.trans: the transpose).
#pragma once

#include <stdint.h>

// ---- tensor core -------------------------------------------------------------------------------
// D = A·B + C, A/B bf16, C/D f32. d may alias c.
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4]) {
#ifdef DELTADIT_SIM
    ::deltadit_sim::mma_m16n8k16(d, a, b, c, false);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

// D = A·B + C, A/B f16, C/D f32. d may alias c.
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4]) {
#ifdef DELTADIT_SIM
    ::deltadit_sim::mma_m16n8k16(d, a, b, c, true);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

// Dispatch on the element type (T = __nv_bfloat16 or __half), for templated kernels.
template <typename T> struct MmaM16n8k16;
template <> struct MmaM16n8k16<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
        mma_m16n8k16_bf16(d, a, b, c);
    }
};
template <> struct MmaM16n8k16<__half> {
    static __device__ __forceinline__ void run(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
        mma_m16n8k16_f16(d, a, b, c);
    }
};
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    MmaM16n8k16<T>::run(d, a, b, c);
}

// ---- ldmatrix ----------------------------------------------------------------------------------
#ifndef DELTADIT_SIM
__device__ __forceinline__ uint32_t deltadit_smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

#ifdef DELTADIT_SIM
#define DELTADIT_LDMATRIX(fname, num, trans, ptx, outs, ...)                                            \
    __device__ __forceinline__ void fname(uint32_t* r, const void* smem_row_ptr) {                       \
        ::deltadit_sim::ldmatrix(r, smem_row_ptr, num, trans);                                           \
    }
#else
#define DELTADIT_LDMATRIX(fname, num, trans, ptx, outs, ...)                                            \
    __device__ __forceinline__ void fname(uint32_t* r, const void* smem_row_ptr) {                       \
        asm volatile(ptx : __VA_ARGS__ : "r"(deltadit_smem_u32(smem_row_ptr)));                          \
    }
#endif
// r has 1, 2 or 4 registers; smem_row_ptr is this lane's row address (see the header comment).
DELTADIT_LDMATRIX(ldmatrix_x1, 1, false, "ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n", 1, "=r"(r[0]))
DELTADIT_LDMATRIX(ldmatrix_x2, 2, false, "ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n", 2,
                  "=r"(r[0]), "=r"(r[1]))
DELTADIT_LDMATRIX(ldmatrix_x4, 4, false, "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n", 4,
                  "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]))
DELTADIT_LDMATRIX(ldmatrix_x1_trans, 1, true, "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n", 1,
                  "=r"(r[0]))
DELTADIT_LDMATRIX(ldmatrix_x2_trans, 2, true, "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n", 2,
                  "=r"(r[0]), "=r"(r[1]))
DELTADIT_LDMATRIX(ldmatrix_x4_trans, 4, true,
                  "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n", 4, "=r"(r[0]),
                  "=r"(r[1]), "=r"(r[2]), "=r"(r[3]))
#undef DELTADIT_LDMATRIX

// ---- cp.async (sm_80+) -------------------------------------------------------------------------
// 16-byte global -> shared copy, bypassing L1. Both addresses 16-byte aligned. Completes at the
// cp_async_wait<N>() / cp_async_wait_all() that covers its commit group: read the destination
// only after that wait (and a __syncthreads() if other threads read it).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
#ifdef DELTADIT_SIM
    ::deltadit_sim::cp_async_16(smem, gmem, true);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(deltadit_smem_u32(smem)), "l"(gmem)
                 : "memory");
#endif
}

// As cp_async_16, but when !valid writes 16 zero bytes and reads nothing (gmem may then be any
// pointer, e.g. a clamped one): for tiles that run past the end of a tensor.
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, bool valid) {
#ifdef DELTADIT_SIM
    ::deltadit_sim::cp_async_16(smem, gmem, valid);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(deltadit_smem_u32(smem)), "l"(gmem),
                 "r"(valid ? 16 : 0)
                 : "memory");
#endif
}

// Closes the current group of cp.async copies issued by this thread.
__device__ __forceinline__ void cp_async_commit() {
#ifdef DELTADIT_SIM
    ::deltadit_sim::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight (the newest N).
template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef DELTADIT_SIM
    ::deltadit_sim::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Waits for every cp.async of this thread, committed or not.
__device__ __forceinline__ void cp_async_wait_all() {
#ifdef DELTADIT_SIM
    ::deltadit_sim::cp_async_wait_all();
#else
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// ---- packing -----------------------------------------------------------------------------------
// 2^x on the special-function unit without the denormal fix-up exp2f wraps around it (ex2.approx
// has ~2 ulp error and flushes denormal results to zero: fine for softmax weights in (0, 1]).
__device__ __forceinline__ float ex2_approx_ftz(float x) {
#ifdef DELTADIT_SIM
    return exp2f(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// Two floats -> one bf16x2 / f16x2 register (round to nearest even), lo in the low half: the
// layout mma operands use (e.g. the P tile of attention, converted from the f32 accumulator).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}
// Two 16-bit values -> one register (lo in the low half), and back to floats.
__device__ __forceinline__ uint32_t pack_u16x2(uint16_t lo, uint16_t hi) {
    return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}
__device__ __forceinline__ float bf16x2_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16x2_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ float f16x2_lo(uint32_t v) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(v & 0xffffu)));
}
__device__ __forceinline__ float f16x2_hi(uint32_t v) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(v >> 16)));
}
// Element-type dispatch for templated kernels (T = __nv_bfloat16 or __half).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) { return pack_bf16x2(lo, hi); }
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) { return pack_f16x2(lo, hi); }
