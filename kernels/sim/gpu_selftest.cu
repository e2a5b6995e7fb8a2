// The portable shim self-tests on a real GPU: the same kernels (sim/selftest_kernels.cuh) and
// host checks (sim/selftest_cases.h) as under the shim, so the fragment layouts, shuffle
// semantics and cp.async behaviour the shim emulates are confirmed on hardware.
// Not part of the cargo build (build.rs compiles kernels/*.cu only); scripts/gpu-build.sh builds it
// into the GPU bundle (bin/gpu_selftest, run first by run.sh). By hand:
//   nvcc -std=c++17 -O2 -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a \
//        -cudart static -I kernels kernels/sim/gpu_selftest.cu -o gpu_selftest && ./gpu_selftest
// The wgmma case runs on compute capability 9.0 only (sm_90a SASS), and last: on other GPUs its
// kernel would trap.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

static void* st_alloc(size_t bytes) {
    void* p = nullptr;
    if (cudaMallocManaged(&p, bytes) != cudaSuccess) {
        fprintf(stderr, "cudaMallocManaged(%zu) failed\n", bytes);
        exit(2);
    }
    return p;
}
static void st_free(void* p) { cudaFree(p); }
#define ST_SHIM false
namespace simtest {
struct Case;
}
#include "sim/selftest_kernels.cuh"
template <typename K>
static int st_launch_gpu(simtest::Case& c, K kernel, const SimTestParams& p, dim3 g, dim3 b, size_t smem);
#define ST_LAUNCH(c, kernel, params, grid, block, smem) st_launch_gpu(c, kernel, params, grid, block, smem)
#include "sim/selftest_cases.h"

template <typename K>
static int st_launch_gpu(simtest::Case& c, K kernel, const SimTestParams& p, dim3 g, dim3 b, size_t smem) {
    if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    kernel<<<g, b, smem>>>(p);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    c.last_error = e == cudaSuccess ? "" : cudaGetErrorString(e);
    return e != cudaSuccess;
}

int main(int argc, char** argv) {
    using namespace simtest;
    const struct {
        const char* name;
        void (*fn)(Case&);
    } cases[] = {
        {"geometry", case_geometry}, {"barrier", case_barrier},   {"exited_threads", case_exited},
        {"shfl", case_shfl},         {"vote", case_vote},         {"mma_bf16", case_mma_bf16},
        {"mma_f16", case_mma_f16},   {"ldmatrix", case_ldmatrix}, {"attention_tile", case_attention_tile},
        {"cp_async", case_cp_async}, {"atomics", case_atomics}, {"wgmma", case_wgmma},
    };
    cudaDeviceProp prop;
    if (cudaError_t e = cudaGetDeviceProperties(&prop, 0); e != cudaSuccess) {
        printf("skipped: no CUDA device: %s\n", cudaGetErrorString(e));
        return 0;
    }
    printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    int fails = 0, passes = 0;
    for (const auto& t : cases) {
        if (argc > 1 && strcmp(argv[1], t.name) != 0) continue;
        if (!strcmp(t.name, "wgmma")) {
            // Only sm_90a code has the kernel's body (elsewhere it traps): check which code the
            // runtime picked for this device before launching it.
            cudaFuncAttributes fa{};
            if (!(prop.major == 9 && prop.minor == 0) || cudaFuncGetAttributes(&fa, simtest_wgmma) != cudaSuccess ||
                fa.binaryVersion != 90) {
                printf("%-16s skipped: needs compute capability 9.0 and sm_90a code (device sm_%d%d, code sm_%d)\n", t.name,
                       prop.major, prop.minor, fa.binaryVersion);
                continue;
            }
        }
        Case c;
        auto t0 = std::chrono::steady_clock::now();
        t.fn(c);
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        printf("%-16s %s (%.3f s): %s\n", t.name, c.ok() ? "ok" : "FAIL", dt, c.ok() ? c.info.c_str() : c.err.c_str());
        fails += !c.ok();
        passes += c.ok();
    }
    // The summary line scripts/gpu-run.sh counts (cargo test's format).
    printf("test result: %s. %d passed; %d failed\n", fails ? "FAILED" : "ok", passes, fails);
    return fails ? 1 : 0;
}
