// Self-tests of the shim (placeholder: the full suite follows).
#include "common.cuh"
#include "sim/internal.h"

#include <mutex>

#include <chrono>
#include <string>

extern "C" int deltadit_sim_launch(const char*, const void*, size_t, unsigned, unsigned, unsigned, unsigned,
                                   unsigned, unsigned, size_t);
extern "C" const char* deltadit_sim_last_error(void);

namespace {
struct BarrierP {
    float* out;
    int phases;
};
__global__ void simtest_barrier_bench(BarrierP p) {
    __shared__ float s[128];
    float v = float(threadIdx.x);
    for (int i = 0; i < p.phases; ++i) {
        s[threadIdx.x] = v;
        __syncthreads();
        v = s[(threadIdx.x + 1) % 128];
        __syncthreads();
    }
    p.out[threadIdx.x] = v;
}
}  // namespace

extern "C" const char* deltadit_sim_selftest_names(void) { return "barrier_bench"; }

extern "C" int deltadit_sim_selftest(const char* name, char* msg, size_t cap) {
    static std::once_flag once;
    std::call_once(once, [] { DELTADIT_SIM_KERNEL(simtest_barrier_bench, BarrierP) });
    if (std::string(name) != "barrier_bench") return 2;
    float out[128];
    BarrierP p{out, 5000};
    auto t0 = std::chrono::steady_clock::now();
    int rc = deltadit_sim_launch("simtest_barrier_bench", &p, sizeof p, 1, 1, 1, 128, 1, 1, 0);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bool ok = rc == 0;
    for (int t = 0; t < 128 && ok; ++t) ok = out[t] == float((t + 5000) % 128);
    snprintf(msg, cap, "%s: 10000 barrier phases x 128 threads in %.4f s", ok ? "ok" : "FAILED", dt);
    return ok ? 0 : 1;
}
