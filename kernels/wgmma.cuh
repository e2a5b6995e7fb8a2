// Warpgroup MMA (wgmma, sm_90a only) for kernels/*_sm90a.cu. Like ptx.cuh, each helper has a GPU
// branch (inline PTX) and a shim branch (kernels/sim/wgmma_sim.cpp, selected by DELTADIT_SIM).
//
// A warpgroup is 4 consecutive warps starting at a warp index divisible by 4; all 128 threads
// issue each wgmma together. m64nNk16 computes a 64×N tile: warp w of the warpgroup holds rows
// 16w..16w+15 of D (and of A, when A comes from registers) in mma.m16n8k16's layouts (ptx.cuh):
// D: d[4j + i] = (row g + 8(i >> 1), col 8j + 2t + (i & 1)); A: a_i = (row g + 8(i & 1),
// k = 2t + 8(i >> 1), +1), with g = lane / 4, t = lane % 4.
//
// Shared-memory operands use the no-swizzle layout: 8 × 16-byte core matrices (8 rows of eight
// 16-bit elements, 128 contiguous bytes each). A descriptor names the first core matrix and two
// strides between core matrices (PTX ISA 9.7.15.5.1.2):
//   K-major  (A; B with trans_b = 0): (mn, k) at start + (mn/8)·SBO + (k/8)·LBO + (mn%8)·16 + (k%8)·2
//   MN-major (B with trans_b = 1):    (n, k)  at start + (n/8)·SBO  + (k/8)·LBO + (k%8)·16 + (n%8)·2
// A second reading agrees: CUTLASS's make_gmma_desc (cute/atom/mma_traits_sm90_gmma.hpp), code
// that runs on Hopper, writes the no-swizzle canonical layouts in 16-byte units as
// ((8,m),2):((1,SBO),LBO) for K-major and ((1,n),(8,k)):((X,SBO),(1,LBO)) for MN-major, i.e. SBO
// steps between core matrices along M/N and LBO along K in both; its GmmaDescriptor bitfield puts
// start >> 4, LBO >> 4 and SBO >> 4 at bits 0, 16 and 32 (14 bits each), as wgmma_desc does. Its
// register layouts (ALayout_64x16 = CLayout_64x16, CLayout_64xN) give the same a_i and d[4j + i]
// positions as above. Only a GPU run (bin/gpu_selftest) can settle it for the hardware.
//
// Ordering: wgmma reads shared memory through the async proxy, so shared memory written by
// ordinary stores or cp.async needs fence_proxy_async_smem() in each writing thread before the
// barrier that publishes it. The accumulators and A registers belong to the wgmma from issue
// until the wgmma_wait that completes its group; wgmma_fence() goes before the first wgmma after
// the registers were touched; wgmma_fence_operands() keeps the compiler from moving accesses of
// an accumulator array across the issue or the wait.
#pragma once

#include <stdint.h>

__device__ __forceinline__ uint32_t wgmma_smem_addr(const void* p) {
#ifdef DELTADIT_SIM
    return ::deltadit_sim::smem_addr(p);
#else
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// Descriptor of a no-swizzle operand starting at `smem` (16-byte aligned), strides in bytes
// (multiples of 16, < 256 KB); base offset 0 and swizzle mode 0.
__device__ __forceinline__ uint64_t wgmma_desc(const void* smem, uint32_t lbo, uint32_t sbo) {
    return uint64_t((wgmma_smem_addr(smem) & 0x3ffffu) >> 4) | uint64_t((lbo & 0x3ffffu) >> 4) << 16 |
           uint64_t((sbo & 0x3ffffu) >> 4) << 32;
}

__device__ __forceinline__ void wgmma_fence() {
#ifdef DELTADIT_SIM
    ::deltadit_sim::wgmma_fence();
#else
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#ifdef DELTADIT_SIM
    ::deltadit_sim::wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most N of the warpgroup's committed wgmma groups are in flight.
template <int N> __device__ __forceinline__ void wgmma_wait() {
#ifdef DELTADIT_SIM
    ::deltadit_sim::wgmma_wait(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Orders this thread's earlier generic-proxy writes of shared memory (stores, cp.async) before
// later async-proxy reads (wgmma).
__device__ __forceinline__ void fence_proxy_async_smem() {
#ifndef DELTADIT_SIM
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

template <int N> __device__ __forceinline__ void wgmma_fence_operands(float (&d)[N]) {
#ifndef DELTADIT_SIM
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// Wgmma<T, N>::ss    D(64×N) += A·B, A and B K-major in shared memory (N = 64);
// Wgmma<T, N>::rs    D(64×N) += A·B, A from registers, B K-major in shared memory (N = 64);
// Wgmma<T, N>::rs_tb D(64×N) += A·B, A from registers, B MN-major in shared memory (N = 72).
// Only the shapes the kernels use are spelled out (the PTX operand lists grow with N).
template <typename T, int N> struct Wgmma;

#ifdef DELTADIT_SIM
template <typename T, int N> struct Wgmma {
    static constexpr bool F16 = std::is_same<T, __half>::value;
    static void ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b) {
        ::deltadit_sim::wgmma_issue(d, N, nullptr, desc_a, desc_b, 0, F16);
    }
    static void rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b) {
        ::deltadit_sim::wgmma_issue(d, N, a, 0, desc_b, 0, F16);
    }
    static void rs_tb(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b) {
        ::deltadit_sim::wgmma_issue(d, N, a, 0, desc_b, 1, F16);
    }
};
#else
// The accumulator register lists of the two shapes (N/2 registers each), spelled out once.
#define DELTADIT_WGMMA_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define DELTADIT_WGMMA_D36 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35}"
#define DELTADIT_WGMMA_OUT32 \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define DELTADIT_WGMMA_OUT36 DELTADIT_WGMMA_OUT32, "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35])
// A from registers: NAME(d[ND], a, desc_b) = m64n<N>k16 with trans-b TB; OPS and P are the operand
// numbers of a[0..3], desc_b and the scale-d flag, which follow the ND accumulators.
#define DELTADIT_WGMMA_RS(NAME, N, ND, TY, TB, DLIST, DOUT, OPS, P)                                       \
    static __device__ __forceinline__ void NAME(float (&d)[ND], const uint32_t (&a)[4], uint64_t desc_b) { \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\n"                                        \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " DLIST                \
                     ", " OPS ", p, 1, 1, " #TB ";\n}\n"                                                   \
                     : DOUT                                                                                \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));                   \
    }
// The shapes for one element type (TY: its PTX name). scale-d is the predicate p (always 1: D += A·B).
#define DELTADIT_WGMMA_SHAPES(T, TY)                                                                       \
    template <> struct Wgmma<T, 64> {                                                                      \
        static __device__ __forceinline__ void ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b) {     \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                      \
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " DELTADIT_WGMMA_D32   \
                         ", %32, %33, p, 1, 1, 0, 0;\n}\n"                                                 \
                         : DELTADIT_WGMMA_OUT32                                                          \
                         : "l"(desc_a), "l"(desc_b), "r"(1));                                              \
        }                                                                                                  \
        DELTADIT_WGMMA_RS(rs, 64, 32, TY, 0, DELTADIT_WGMMA_D32, DELTADIT_WGMMA_OUT32, "{%32, %33, %34, %35}, %36", "%37") \
    };                                                                                                     \
    template <> struct Wgmma<T, 72> {                                                                      \
        DELTADIT_WGMMA_RS(rs_tb, 72, 36, TY, 1, DELTADIT_WGMMA_D36, DELTADIT_WGMMA_OUT36, "{%36, %37, %38, %39}, %40", "%41") \
    };
DELTADIT_WGMMA_SHAPES(__nv_bfloat16, "bf16")
DELTADIT_WGMMA_SHAPES(__half, "f16")
#undef DELTADIT_WGMMA_SHAPES
#undef DELTADIT_WGMMA_RS
#undef DELTADIT_WGMMA_OUT36
#undef DELTADIT_WGMMA_OUT32
#undef DELTADIT_WGMMA_D36
#undef DELTADIT_WGMMA_D32
#endif
