// Launch: the kernel registry, the C ABI (deltadit_sim_launch & co.), per-thread scheduler state.
#include "internal.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <unordered_map>

extern "C" void deltadit_sim_register_all(void);

namespace deltadit_sim {

static thread_local std::unique_ptr<Sched> tl_sched_owner;
static thread_local std::string tl_last_error;
// Warp order: process-wide (deltadit_sim_set_warp_order; default from DELTADIT_SIM_WARP_ORDER),
// unless the calling thread overrides it (the self-tests do, so that concurrent tests don't race).
static std::atomic<int> g_order_mode{-1};
static std::atomic<unsigned> g_order_seed{0};
static __thread int tl_order_override = -1;
static __thread unsigned tl_order_override_seed = 0;

static Sched& sched_for_thread() {
    if (!tl_sched) {
        tl_sched_owner.reset(new Sched());
        tl_sched = tl_sched_owner.get();
        const char* kb = getenv("DELTADIT_SIM_STACK_KB");
        tl_sched->stack_size = size_t(kb ? std::max(16, atoi(kb)) : 256) << 10;
        install_overflow_handler();
    }
    return *tl_sched;
}

// ---- launch ------------------------------------------------------------------------------------
// Filled once, by deltadit_sim_register_all() under registered()'s call_once, then read-only:
// launches by index read it without a lock.
struct Entry {
    std::string name;
    size_t params_size;
    void (*fn)(const void*);
};
static std::vector<Entry> g_kernels;
static std::unordered_map<std::string, int> g_index;

void register_kernel(const char* name, size_t params_size, void (*fn)(const void*)) {
    if (!g_index.emplace(name, int(g_kernels.size())).second) {
        fprintf(stderr, "deltadit_sim: kernel '%s' registered twice; keeping the first\n", name);
        return;
    }
    g_kernels.push_back(Entry{name, params_size, fn});
}

static void registered() {
    static std::once_flag once;
    std::call_once(once, [] { deltadit_sim_register_all(); });
}

static int default_order_mode(unsigned* seed) {
    const char* v = getenv("DELTADIT_SIM_WARP_ORDER");
    const char* sd = getenv("DELTADIT_SIM_SEED");
    *seed = sd ? unsigned(strtoul(sd, nullptr, 0)) : 0;
    if (!v) return 0;
    if (!strcmp(v, "1") || !strcmp(v, "reverse") || !strcmp(v, "reversed")) return 1;
    if (!strcmp(v, "2") || !strcmp(v, "shuffle") || !strcmp(v, "shuffled")) return 2;
    return 0;
}

static int report(std::string msg) {
    if (env_abort()) {
        fprintf(stderr, "%s\n", msg.c_str());
        abort();
    }
    tl_last_error = std::move(msg);
    return 1;
}

void set_thread_warp_order(int warp_order, unsigned seed) {
    tl_order_override = warp_order < 0 || warp_order > 2 ? -1 : warp_order;
    tl_order_override_seed = seed;
}

}  // namespace deltadit_sim

using namespace deltadit_sim;

extern "C" const char* deltadit_sim_last_error(void) { return tl_last_error.c_str(); }

extern "C" void deltadit_sim_set_warp_order(int warp_order, unsigned seed) {
    g_order_seed = seed;
    g_order_mode = warp_order < 0 || warp_order > 2 ? 0 : warp_order;
}

extern "C" int deltadit_sim_kernel_index(const char* name) {
    registered();
    auto it = g_index.find(name ? name : "");
    return it == g_index.end() ? -1 : it->second;
}

extern "C" int deltadit_sim_launch(const char* name, const void* params, size_t params_size, unsigned gx,
                                   unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                   size_t dyn_smem) {
    int idx = deltadit_sim_kernel_index(name);
    if (idx < 0) {
        tl_last_error.clear();
        return report(fmt("deltadit_sim: unknown kernel '%s'", name ? name : "(null)"));
    }
    return deltadit_sim_launch_index(idx, params, params_size, gx, gy, gz, bx, by, bz, dyn_smem);
}

extern "C" int deltadit_sim_launch_index(int index, const void* params, size_t params_size, unsigned gx,
                                         unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                         size_t dyn_smem) {
    registered();
    tl_last_error.clear();
    if (index < 0 || size_t(index) >= g_kernels.size())
        return report(fmt("deltadit_sim: no kernel with index %d (%zu registered)", index, g_kernels.size()));
    const Entry& e = g_kernels[size_t(index)];
    const char* name = e.name.c_str();
    if (params_size != e.params_size)
        return report(fmt("deltadit_sim: kernel '%s': params size %zu, expected %zu", name, params_size, e.params_size));
    uint64_t nthreads = uint64_t(bx) * by * bz;
    if (!gx || !gy || !gz || !bx || !by || !bz || nthreads > 1024 || bz > 64 || gy > 65535 || gz > 65535 ||
        gx > 0x7fffffffu)
        return report(fmt("deltadit_sim: kernel '%s': invalid launch grid (%u,%u,%u) block (%u,%u,%u)", name, gx,
                          gy, gz, bx, by, bz));
    if (dyn_smem > 227 * 1024)
        return report(fmt("deltadit_sim: kernel '%s': %zu bytes of dynamic shared memory (max 232448)", name, dyn_smem));
    Sched& s = sched_for_thread();
    if (s.cur) return report(fmt("deltadit_sim: kernel '%s' launched from inside a kernel", name));

    // Params: copied once, 16-byte aligned, shared by every fiber of the launch.
    std::vector<std::max_align_t> pbuf(params_size / sizeof(std::max_align_t) + 1);
    if (params_size) memcpy(pbuf.data(), params, params_size);
    s.kname = name, s.fn = e.fn, s.params = pbuf.data();
    s.grid = ::uint3{gx, gy, gz}, s.block = ::uint3{bx, by, bz};
    s.nthreads = unsigned(nthreads), s.nwarps = (s.nthreads + 31) / 32;
    tl_blockDim = s.block, tl_gridDim = s.grid;

    if (!ensure_stacks(s, s.nthreads)) return report("deltadit_sim: cannot map fiber stacks");
    if (s.fibers.size() < s.nthreads) s.fibers.resize(s.nthreads);
    s.warps.assign(s.nwarps, Warp{});
    for (unsigned t = 0; t < s.nthreads; ++t) {
        Fiber& f = s.fibers[t];
        f.stack_lo = s.stacks + t * (s.stack_size + kGuard) + kGuard;
        f.tid = t, f.lane = t % 32, f.warp = t / 32;
        f.tidx = ::uint3{t % bx, (t / bx) % by, t / (bx * by)};
        Warp& w = s.warps[f.warp];
        w.lanes[f.lane] = &f;
        w.exist |= 1u << f.lane;
    }
    size_t qcap = 1;
    while (qcap < s.nthreads) qcap <<= 1;
    s.q.assign(qcap, nullptr);

    size_t need = smem_rounded(dyn_smem) + 2 * kRedZone;
    if (s.smem_cap < need) {
        free(s.smem_region);
        s.smem_region = static_cast<unsigned char*>(aligned_alloc(128, need));
        s.smem_cap = need;
    }
    s.smem = s.smem_region + kRedZone, s.smem_size = dyn_smem;

    if (tl_order_override >= 0) {
        s.order_mode = tl_order_override, s.seed = tl_order_override_seed;
    } else {
        static std::once_flag env_once;
        std::call_once(env_once, [] {
            unsigned seed;
            int m = default_order_mode(&seed);
            int expect = -1;
            if (g_order_mode.compare_exchange_strong(expect, m)) g_order_seed = seed;
        });
        s.order_mode = g_order_mode.load(), s.seed = g_order_seed.load();
    }
    s.order.resize(s.nthreads);
    for (unsigned t = 0; t < s.nthreads; ++t) s.order[t] = s.order_mode == 1 ? s.nthreads - 1 - t : t;

    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                s.bidx = ::uint3{x, y, z};
                if (!run_block(s)) {
                    s.params = nullptr;
                    return report(s.error);
                }
            }
    s.params = nullptr;
    return 0;
}
