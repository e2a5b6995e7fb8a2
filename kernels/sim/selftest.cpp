// Shim self-tests: the portable cases of sim/selftest_cases.h run through deltadit_sim_launch, plus
// shim-only ones (warp orders, planted bugs the diagnostics must catch, launch errors, speed).
// Entry points for src/backend/sim/selftest.rs:
//   deltadit_sim_selftest_names()  space-separated test names
//   deltadit_sim_selftest(name, msg, cap)  0 pass, 1 fail, 2 unknown; msg: summary or failure
#include "common.cuh"
#include "sim/internal.h"
#include "sim/selftest_kernels.cuh"

#include <chrono>
#include <cstdlib>
#include <mutex>
#include <string>

static void* st_alloc(size_t bytes) { return aligned_alloc(256, (bytes + 255) & ~size_t(255)); }
static void st_free(void* p) { free(p); }
#define ST_SHIM true
namespace simtest {
struct Case;
}
static int st_launch(simtest::Case& c, const char* name, const SimTestParams& p, dim3 g, dim3 b, size_t smem);
#define ST_LAUNCH(c, kernel, params, grid, block, smem) st_launch(c, #kernel, params, grid, block, smem)

#include "sim/selftest_cases.h"

static int st_launch(simtest::Case& c, const char* name, const SimTestParams& p, dim3 g, dim3 b, size_t smem) {
    int rc = deltadit_sim_launch(name, &p, sizeof p, g.x, g.y, g.z, b.x, b.y, b.z, smem);
    c.last_error = rc ? deltadit_sim_last_error() : "";
    return rc;
}

// ---- shim-only kernels -------------------------------------------------------------------------
// Warp 0 writes shared memory, the other warps read it; mode 0 forgets the barrier in between.
__global__ void simtest_missing_barrier(SimTestParams p) {
    unsigned tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    float* s = dynamic_smem<float>();
    __syncthreads();
    if (warp == 0) s[lane] = static_cast<const float*>(p.in0)[lane];
    if (p.mode) __syncthreads();
    if (warp > 0) static_cast<float*>(p.out0)[tid] = s[lane] * 2.0f;
}

// Planted bugs, one per mode; each launch must fail with a message naming the problem.
__global__ void simtest_diag(SimTestParams p) {
    unsigned tid = threadIdx.x, lane = tid % 32;
    unsigned char* sm = dynamic_smem<unsigned char>();
    uint32_t r[4];
    float v = float(tid), c4[4] = {0, 0, 0, 0};
    switch (p.mode) {
    case 0:  // lanes of one warp in different collectives
        if (lane < 16) v = __shfl_sync(0xffffffffu, v, 0);
        else v = float(__ballot_sync(0xffffffffu, tid & 1));
        break;
    case 1:  // a shuffle on one side of a branch, a barrier on the other
        if (lane < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
        else __syncthreads();
        break;
    case 2:  // a lane leaves while its warp shuffles
        if (lane == 5) return;
        v = __shfl_sync(0xffffffffu, v, 0);
        break;
    case 3:  // a mask without the calling lane
        v = __shfl_sync(0x0000ffffu << (lane < 16 ? 16 : 0), v, 0);
        break;
    case 4:  // misaligned ldmatrix row
        ldmatrix_x4(r, sm + 16 * lane + 8);
        break;
    case 5:  // cp.async past the end of dynamic shared memory
        cp_async_16(sm + p.n + 16 * lane, p.in0);
        cp_async_wait_all();
        break;
    case 6:  // a plain store past the end of dynamic shared memory
        if (tid == 3) reinterpret_cast<float*>(sm)[p.n / 4 + 1] = 1.0f;
        break;
    case 7:  // mma in a partial warp
        mma_m16n8k16_bf16(c4, r, r, c4);
        break;
    case 8:
        if (tid == 7) __trap();
        break;
    case 9:  // ldmatrix from global memory
        ldmatrix_x4(r, static_cast<const unsigned char*>(p.in0) + 16 * lane);
        break;
    case 10:  // a warp split between __syncwarp and __syncthreads never meets again
        if (lane < 16) __syncwarp();
        else __syncthreads();
        break;
    default:  // shuffle width that is not a power of 2
        v = __shfl_down_sync(0xffffffffu, v, 1, 3);
        break;
    }
    static_cast<float*>(p.out0)[tid] = v + c4[0] + float(r[0] & 0);
}

// One cp.async and one ldmatrix.x4 per lane at the dynamic shared-memory offsets p.in1[lane] (bank
// accounting, smem_traffic.cpp); the data is not checked here (case_cp_async and case_ldmatrix do).
__global__ void simtest_smem_traffic(SimTestParams p) {
    const unsigned lane = threadIdx.x % 32;
    unsigned char* sm = dynamic_smem<unsigned char>();
    const int off = static_cast<const int*>(p.in1)[lane];
    cp_async_16(sm + off, static_cast<const unsigned char*>(p.in0) + 16 * lane);
    cp_async_wait_all();
    __syncwarp();
    uint32_t r[4];
    ldmatrix_x4(r, sm + off);
    static_cast<uint32_t*>(p.out0)[lane] = r[0] ^ r[1] ^ r[2] ^ r[3];
}

static void register_selftest_kernels() {
    DELTADIT_SIM_KERNEL(simtest_geometry, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_barrier, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_exited, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_shfl, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_vote, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_mma, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_ldmatrix, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_attention_tile, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_cp_async, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_atomics, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_wgmma, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_bench_barrier, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_bench_mma, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_bench_shfl, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_missing_barrier, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_diag, SimTestParams)
    DELTADIT_SIM_KERNEL(simtest_smem_traffic, SimTestParams)
}

namespace simtest {

// Correct kernels give the same results under every warp order.
static void case_warp_orders(Case& c) {
    const struct {
        int mode;
        unsigned seed;
    } orders[] = {{1, 0}, {2, 1}, {2, 2}, {2, 3}};
    for (auto o : orders) {
        deltadit_sim::set_thread_warp_order(o.mode, o.seed);
        for (void (*f)(Case&) : {case_barrier, case_exited, case_shfl, case_cp_async, case_attention_tile}) {
            Case sub;
            f(sub);
            if (!sub.ok()) return c.fail("warp order %d (seed %u): %s", o.mode, o.seed, sub.err.c_str());
        }
    }
    c.note("barrier, exited, shfl, cp_async, attention_tile pass with warps reversed and shuffled (3 seeds)");
}

// The bank accounting against wavefront counts worked out by hand from the model in
// smem_traffic.cpp (4 phases of 8 lanes, for cp.async and for the 4 matrices of ldmatrix.x4).
static void case_smem_traffic(Case& c) {
    const struct {
        const char* what;
        int (*offset)(int lane);
        uint64_t wavefronts;  // per instruction, 4 phases
    } patterns[] = {
        {"consecutive 16-byte rows", [](int l) { return 16 * l; }, 4},
        {"rows 128 bytes apart (8 rows in one bank group)", [](int l) { return 128 * l; }, 32},
        {"rows 64 bytes apart (4 rows a group)", [](int l) { return 64 * l; }, 16},
        {"one address per phase (broadcast)", [](int l) { return 16 * (l / 8); }, 4},
        {"rows of a 144-byte pitch (head dim 72, padded)", [](int l) { return 144 * l; }, 4},
        {"two chunks of four rows a phase, 128 bytes apart", [](int l) { return (l & 1) * 128 + (l >> 1) * 16; }, 8},
    };
    unsigned char* src = c.alloc<unsigned char>(32 * 16);
    Rng rng(12);
    for (int i = 0; i < 32 * 16; ++i) src[i] = uint8_t(rng.u32());
    int* offs = c.alloc<int>(32);
    uint32_t* out = c.alloc<uint32_t>(32);
    for (const auto& pat : patterns) {
        for (int l = 0; l < 32; ++l) offs[l] = pat.offset(l);
        SimTestParams p{};
        p.in0 = src, p.in1 = offs, p.out0 = out;
        deltadit_sim_smem_stats_begin();
        const int rc = st_launch(c, "simtest_smem_traffic", p, dim3(1, 1, 1), dim3(32, 1, 1), 8192);
        DeltaditSimSmemStats st;
        deltadit_sim_smem_stats_end(&st);
        const uint64_t n[6] = {st.ldmatrix_requests, st.ldmatrix_wavefronts, st.ldmatrix_ideal,
                               st.cp_async_requests, st.cp_async_wavefronts, st.cp_async_ideal};
        if (rc) return c.fail("launch failed: %s", c.last_error.c_str());
        const char* op[2] = {"ldmatrix.x4", "cp.async"};
        for (int i = 0; i < 2; ++i)
            if (n[3 * i] != 1 || n[3 * i + 1] != pat.wavefronts || n[3 * i + 2] != 4)
                return c.fail("%s, %s: %llu requests, %llu wavefronts (ideal %llu); want 1, %llu (ideal 4)", pat.what, op[i],
                              (unsigned long long)n[3 * i], (unsigned long long)n[3 * i + 1],
                              (unsigned long long)n[3 * i + 2], (unsigned long long)pat.wavefronts);
    }
    DeltaditSimSmemStats st;
    const int rc = st_launch(c, "simtest_smem_traffic", SimTestParams{src, offs, nullptr, out}, dim3(1, 1, 1), dim3(32, 1, 1), 8192);
    deltadit_sim_smem_stats_end(&st);
    if (rc || st.ldmatrix_requests || st.cp_async_requests)
        return c.fail("launch outside begin/end counted (%llu, %llu requests)", (unsigned long long)st.ldmatrix_requests,
                      (unsigned long long)st.cp_async_requests);
    // wgmma's shared-memory operand bytes and multiply-adds (one warpgroup instruction each:
    // m64n64k16 with A and B from shared memory, m64n72k16 with A from registers), mma.sync's
    // multiply-adds (one m16n8k16 a warp, two warps).
    uint16_t* A = c.alloc<uint16_t>(64 * 16);
    uint16_t* B = c.alloc<uint16_t>(16 * 72);
    float* C = c.alloc<float>(64 * 72);
    float* D = c.alloc<float>(64 * 72);
    for (int i = 0; i < 64 * 16; ++i) A[i] = f32_to_bf16(rng.normal());
    for (int i = 0; i < 16 * 72; ++i) B[i] = f32_to_bf16(rng.normal());
    for (int i = 0; i < 64 * 72; ++i) C[i] = rng.normal();
    const struct {
        const char* kernel;
        int mode;
        unsigned threads;
        size_t smem;
        uint64_t wgmma_bytes, wgmma_macs, mma_macs;
    } ops[] = {
        {"simtest_wgmma", 0, 128, 4608, 64 * 16 * 2 + 64 * 16 * 2, 64 * 64 * 16, 0},
        {"simtest_wgmma", 1, 128, 4608, 72 * 16 * 2, 64 * 72 * 16, 0},
        {"simtest_mma", 0, 64, 0, 0, 0, 2 * 16 * 8 * 16},
    };
    for (const auto& op : ops) {
        SimTestParams p{};
        p.in0 = A, p.in1 = B, p.in2 = C, p.out0 = D, p.mode = op.mode;
        deltadit_sim_smem_stats_begin();
        const int rc = st_launch(c, op.kernel, p, dim3(1, 1, 1), dim3(op.threads, 1, 1), op.smem);
        DeltaditSimSmemStats st;
        deltadit_sim_smem_stats_end(&st);
        if (rc) return c.fail("%s mode %d: launch failed: %s", op.kernel, op.mode, c.last_error.c_str());
        if (st.wgmma_smem_bytes != op.wgmma_bytes || st.wgmma_macs != op.wgmma_macs || st.mma_macs != op.mma_macs)
            return c.fail("%s mode %d: wgmma %llu bytes, %llu MACs, mma %llu MACs; want %llu, %llu, %llu", op.kernel, op.mode,
                          (unsigned long long)st.wgmma_smem_bytes, (unsigned long long)st.wgmma_macs,
                          (unsigned long long)st.mma_macs, (unsigned long long)op.wgmma_bytes,
                          (unsigned long long)op.wgmma_macs, (unsigned long long)op.mma_macs);
    }
    c.note("ldmatrix.x4 and cp.async wavefronts of 6 address patterns (conflict-free, 2-, 4- and 8-way, broadcast); "
           "wgmma operand bytes and MACs (SS m64n64k16, RS m64n72k16), mma.sync MACs");
}

// A missing __syncthreads is hidden by in-order cooperative scheduling but caught under the
// reversed and shuffled orders; with the barrier in place every order is right.
static void case_missing_barrier(Case& c) {
    Rng rng(11);
    const unsigned n = 128;
    float* in = c.alloc<float>(32);
    for (int i = 0; i < 32; ++i) in[i] = rng.normal() + 3.0f;
    const struct {
        int mode;
        unsigned seed;
    } orders[] = {{0, 0}, {1, 0}, {2, 1}, {2, 2}, {2, 3}, {2, 4}, {2, 5}};
    int caught = 0, hidden_in_order = 0;
    for (int with_barrier = 0; with_barrier < 2; ++with_barrier)
        for (auto o : orders) {
            deltadit_sim::set_thread_warp_order(o.mode, o.seed);
            float* out = c.alloc<float>(n);
            SimTestParams p{};
            p.in0 = in, p.out0 = out, p.mode = with_barrier;
            int rc = ST_LAUNCH(c, simtest_missing_barrier, p, dim3(1, 1, 1), dim3(n, 1, 1), 32 * 4);
            bool right = rc == 0;
            for (unsigned t = 32; t < n && right; ++t) right = out[t] == in[t % 32] * 2.0f;
            if (with_barrier && !right)
                return c.fail("with the barrier, warp order %d seed %u gives a wrong result (%s)", o.mode, o.seed,
                              c.last_error.c_str());
            if (!with_barrier && o.mode == 0) hidden_in_order = right;
            if (!with_barrier && o.mode != 0) {
                if (right) return c.fail("missing barrier not detected under warp order %d seed %u", o.mode, o.seed);
                ++caught;
            }
        }
    c.note("missing __syncthreads caught under reversed and 5 shuffled orders (%d/6)%s", caught,
           hidden_in_order ? "; in order it is hidden, as expected of cooperative scheduling" : "");
}

static void case_diagnostics(Case& c) {
    if (getenv("DELTADIT_SIM_ABORT") && strcmp(getenv("DELTADIT_SIM_ABORT"), "0")) {
        c.note("skipped: DELTADIT_SIM_ABORT is set, planted bugs would abort");
        return;
    }
    unsigned char* gmem = c.alloc<unsigned char>(4096);
    const struct {
        int mode;
        unsigned threads;
        const char* want[3];
    } plants[] = {
        {0, 64, {"divergent warp", "__ballot_sync", "__shfl_sync"}},
        {1, 64, {"deadlock", "__shfl_xor_sync", "__syncthreads"}},
        {2, 64, {"exited", "__shfl_sync", "lane 5"}},
        {3, 64, {"does not include the calling lane", "__shfl_sync", nullptr}},
        {4, 64, {"not 16-byte aligned", "ldmatrix.x4", nullptr}},
        {5, 64, {"cp.async", "outside the 1024 bytes of dynamic shared memory", nullptr}},
        {6, 64, {"out of bounds", "dynamic shared memory of 1024 bytes", nullptr}},
        {7, 48, {"needs all 32 lanes", "mma", nullptr}},
        {8, 64, {"__trap", "thread (7,0,0)", nullptr}},
        {9, 64, {"not shared memory", "ldmatrix.x4", nullptr}},
        {10, 64, {"deadlock", "__syncwarp", "__syncthreads"}},
        {11, 64, {"width must be a power of 2", "__shfl_down_sync", nullptr}},
    };
    for (int order = 0; order < 2; ++order) {
        deltadit_sim::set_thread_warp_order(order, 0);
        for (const auto& pl : plants) {
            SimTestParams p{};
            p.in0 = gmem, p.out0 = c.alloc<float>(64), p.mode = pl.mode, p.n = 1024;
            if (ST_LAUNCH(c, simtest_diag, p, dim3(2, 1, 1), dim3(pl.threads, 1, 1), 1024) == 0)
                return c.fail("planted bug %d (order %d) was not reported", pl.mode, order);
            const std::string& e = c.last_error;
            for (const char* w : pl.want)
                if (w && e.find(w) == std::string::npos)
                    return c.fail("planted bug %d: message lacks \"%s\": %s", pl.mode, w, e.c_str());
            if (e.find("simtest_diag") == std::string::npos || e.find("block (0,0,0)") == std::string::npos)
                return c.fail("planted bug %d: message does not name the kernel and block: %s", pl.mode, e.c_str());
            if (pl.mode != 6 && e.find("thread (") == std::string::npos)
                return c.fail("planted bug %d: message does not name the thread: %s", pl.mode, e.c_str());
            // The shim recovers: the next launch on this thread works.
            Case ok;
            case_vote(ok);
            if (!ok.ok()) return c.fail("launch after planted bug %d failed: %s", pl.mode, ok.err.c_str());
        }
    }
    deltadit_sim::set_thread_warp_order(0, 0);
    SimTestParams p{};
    p.out0 = c.alloc<unsigned>(8 * 4096);
    const struct {
        const char* name;
        size_t size;
        dim3 g, b;
        size_t smem;
        const char* want;
    } launches[] = {
        {"simtest_no_such_kernel", sizeof p, dim3(1, 1, 1), dim3(32, 1, 1), 0, "unknown kernel"},
        {"simtest_geometry", sizeof p - 8, dim3(1, 1, 1), dim3(32, 1, 1), 0, "params size"},
        {"simtest_geometry", sizeof p, dim3(1, 1, 1), dim3(2048, 1, 1), 0, "invalid launch"},
        {"simtest_geometry", sizeof p, dim3(0, 1, 1), dim3(32, 1, 1), 0, "invalid launch"},
        {"simtest_geometry", sizeof p, dim3(1, 1, 1), dim3(32, 1, 1), 300000, "dynamic shared memory"},
    };
    for (const auto& l : launches) {
        int rc = deltadit_sim_launch(l.name, &p, l.size, l.g.x, l.g.y, l.g.z, l.b.x, l.b.y, l.b.z, l.smem);
        std::string e = deltadit_sim_last_error();
        if (rc == 0 || e.find(l.want) == std::string::npos)
            return c.fail("bad launch of %s not reported as \"%s\" (rc %d): %s", l.name, l.want, rc, e.c_str());
    }
    c.note("%zu planted bugs reported with kernel, block and thread (in order and reversed), then recovered; "
           "5 bad launches rejected", sizeof plants / sizeof plants[0]);
}

// A true deadlock: half a warp waits in __syncwarp for lanes parked at __syncthreads.
static void case_deadlock(Case& c) {
    SimTestParams p{};
    p.out0 = c.alloc<float>(128), p.mode = 10;
    for (int order = 0; order < 3; ++order) {
        deltadit_sim::set_thread_warp_order(order, 7);
        if (ST_LAUNCH(c, simtest_diag, p, dim3(1, 1, 1), dim3(128, 1, 1), 0) == 0)
            return c.fail("deadlock not reported (order %d)", order);
        if (c.last_error.find("deadlock") == std::string::npos)
            return c.fail("deadlock reported without saying so: %s", c.last_error.c_str());
    }
    c.note("%s", c.last_error.c_str());
}

template <typename F> static double best_of(int n, F f) {
    double best = 1e30;
    for (int i = 0; i < n; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        f();
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = dt < best ? dt : best;
    }
    return best;
}

static void case_bench_barrier(Case& c) {
    const unsigned n = 128;
    const int phases = 10000;
    float* out = c.alloc<float>(n);
    SimTestParams p{};
    p.out0 = out, p.phases = phases;
    bool ok = true;
    double dt = best_of(3, [&] { ok = ok && ST_RUN(c, simtest_bench_barrier, p, dim3(1, 1, 1), dim3(n, 1, 1), 0); });
    if (!ok) return;
    for (unsigned t = 0; t < n; ++t)
        if (out[t] != float((t + phases / 2) % n)) return c.fail("thread %u: %g", t, out[t]);
    if (dt > 2.0) return c.fail("%d barrier phases x %u threads took %.3f s (> 2 s)", phases, n, dt);
    double sw = deltadit_sim::bench_switch(2000000);
    c.note("%d barrier phases x %u threads in %.4f s (%.1f ns per thread-phase); raw context switch %.1f ns", phases,
           n, dt, dt / phases / n * 1e9, sw * 1e9);
}

static void case_bench_warp(Case& c) {
    const unsigned n = 128, iters = 2000;
    float* out = c.alloc<float>(n * 2);
    SimTestParams p{};
    p.out0 = out, p.phases = int(iters);
    bool ok = true;
    double tm = best_of(3, [&] { ok = ok && ST_RUN(c, simtest_bench_mma, p, dim3(1, 1, 1), dim3(n, 1, 1), 0); });
    p.phases = int(iters * 10);
    double ts = best_of(3, [&] { ok = ok && ST_RUN(c, simtest_bench_shfl, p, dim3(1, 1, 1), dim3(n, 1, 1), 0); });
    if (!ok) return;
    double per_mma = tm / (iters * n / 32), per_shfl = ts / (iters * 10 * n / 32);
    if (per_mma > 1e-3 || per_shfl > 1e-4) return c.fail("mma %.2f us, shuffle %.2f us a warp-op", per_mma * 1e6, per_shfl * 1e6);
    c.note("bf16 mma.m16n8k16 %.2f us a warp-op; __shfl_xor_sync %.3f us a warp-op", per_mma * 1e6, per_shfl * 1e6);
}

struct CaseDef {
    const char* name;
    void (*fn)(Case&);
};
static const CaseDef kCases[] = {
    {"geometry", case_geometry},
    {"barrier", case_barrier},
    {"exited_threads", case_exited},
    {"shfl", case_shfl},
    {"vote", case_vote},
    {"mma_bf16", case_mma_bf16},
    {"mma_f16", case_mma_f16},
    {"ldmatrix", case_ldmatrix},
    {"attention_tile", case_attention_tile},
    {"cp_async", case_cp_async},
    {"atomics", case_atomics},
    {"wgmma", case_wgmma},
    {"smem_traffic", case_smem_traffic},
    {"warp_orders", case_warp_orders},
    {"missing_barrier", case_missing_barrier},
    {"diagnostics", case_diagnostics},
    {"deadlock", case_deadlock},
    {"bench_barrier", case_bench_barrier},
    {"bench_warp", case_bench_warp},
};

}  // namespace simtest

extern "C" const char* deltadit_sim_selftest_names(void) {
    static const std::string names = [] {
        std::string s;
        for (const auto& c : simtest::kCases) s += std::string(s.empty() ? "" : " ") + c.name;
        return s;
    }();
    return names.c_str();
}

extern "C" int deltadit_sim_selftest(const char* name, char* msg, size_t cap) {
    static std::once_flag once;
    std::call_once(once, register_selftest_kernels);
    for (const auto& def : simtest::kCases) {
        if (strcmp(def.name, name) != 0) continue;
        std::string out;
        bool ok;
        {
            simtest::Case c;
            def.fn(c);
            deltadit_sim::set_thread_warp_order(-1, 0);  // back to the process-wide order
            ok = c.ok();
            out = ok ? c.info : c.err;
        }
        if (cap) snprintf(msg, cap, "%s", out.c_str());
        return ok ? 0 : 1;
    }
    return 2;
}
