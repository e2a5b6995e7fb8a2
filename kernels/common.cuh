// Shared by every kernel: dtype helpers, the shim switch, dynamic shared memory and the
// registration of kernels with the SIMT shim.
//
// Every kernel file is compiled twice:
//   * by nvcc into the fatbin (sm_80, sm_90 SASS + compute_90 PTX), and
//   * by g++ as C++17 with -DDELTADIT_SIM against kernels/sim/shim.h, into the static library
//     behind `--device sim`.
// Code that differs between the two branches on DELTADIT_SIM, never on __CUDA_ARCH__ (nvcc's
// host pass would see the CPU branch).
#pragma once

#ifdef DELTADIT_SIM
#include "sim/shim.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#endif

#include "params.h"
#include "ptx.cuh"

typedef __nv_bfloat16 bf16;
typedef __half f16;

// Element conversions used by the templated kernels (T = bf16 or f16).
template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<bf16>(bf16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f32<f16>(f16 v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ f16 from_f32<f16>(float v) { return __float2half(v); }

#include "vec.cuh"

// Dynamic shared memory of the current block, 16-byte aligned.
template <typename T> __device__ __forceinline__ T* dynamic_smem() {
#ifdef DELTADIT_SIM
    return reinterpret_cast<T*>(deltadit_sim::dynamic_smem());
#else
    extern __shared__ __align__(16) unsigned char deltadit_dynamic_smem[];
    return reinterpret_cast<T*>(deltadit_dynamic_smem);
#endif
}

// Registration of a file's kernels with the shim. Each .cu file ends with
//   DELTADIT_SIM_REGISTER(<file stem>,
//       DELTADIT_SIM_KERNEL(kernel_name, ParamsStruct)
//       ...)
// build.rs calls deltadit_sim_register_<stem>() for every kernels/<stem>.cu, so a kernel that is
// not listed cannot be launched under the shim, and a file that forgets the block fails to link.
// Under nvcc the block expands to nothing.
#ifdef DELTADIT_SIM
#define DELTADIT_SIM_KERNEL(kname, PType)                                                          \
    ::deltadit_sim::register_kernel(#kname, sizeof(PType),                                         \
                                    [](const void* p) { kname(*static_cast<const PType*>(p)); });
#define DELTADIT_SIM_REGISTER(stem, ...)                                                           \
    extern "C" void deltadit_sim_register_##stem(void) { __VA_ARGS__ }
#else
#define DELTADIT_SIM_KERNEL(kname, PType)
#define DELTADIT_SIM_REGISTER(stem, ...)
#endif
