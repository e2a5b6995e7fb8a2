// The shim's scheduler: fibers, block barrier, per-warp collectives, diagnostics.
//
// One block = nthreads fibers on the launching OS thread. A fiber runs until it blocks (barrier,
// warp collective) or exits, then switches directly to the next ready fiber; the last thread to
// arrive at a barrier releases the others and keeps running, so a barrier phase costs about one
// context switch per thread. Nothing ready while threads are alive is a deadlock.
#include "internal.h"

#include <algorithm>
#include <cstdarg>
#include <cstdlib>

namespace deltadit_sim {

__thread ::uint3 tl_threadIdx;
__thread ::uint3 tl_blockIdx;
__thread ::uint3 tl_blockDim;
__thread ::uint3 tl_gridDim;
__thread Sched* tl_sched = nullptr;
// Any TLS variable of this module: static __shared__ arrays (thread_local) live near it.
static __thread char tl_tls_probe;

// ---- messages ----------------------------------------------------------------------------------
std::string fmt(const char* f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

std::string lanes_str(unsigned mask) {
    std::string s;
    for (int l = 0; l < 32;) {
        if (!(mask >> l & 1)) { ++l; continue; }
        int e = l;
        while (e + 1 < 32 && (mask >> (e + 1) & 1)) ++e;
        if (!s.empty()) s += ",";
        s += e == l ? fmt("%d", l) : fmt("%d-%d", l, e);
        l = e + 1;
    }
    return s.empty() ? "none" : s;
}

bool env_abort() {
    static const bool on = [] {
        const char* v = getenv("DELTADIT_SIM_ABORT");
        return v && *v && strcmp(v, "0") != 0;
    }();
    return on;
}

static std::string where(const Sched& s, const Fiber* f) {
    std::string m = fmt("kernel '%s' block (%u,%u,%u)", s.kname, s.bidx.x, s.bidx.y, s.bidx.z);
    if (f) m += fmt(" thread (%u,%u,%u) [warp %u lane %u]", f->tidx.x, f->tidx.y, f->tidx.z, f->warp, f->lane);
    return m;
}

// Records the failure, then leaves the running fiber for good (the launch is abandoned: the
// other fibers are dropped with their stacks, which the next block reinitialises).
void fail_fiber(Fiber* named, const std::string& msg) {
    Sched* s = tl_sched;
    if (!s || !s->cur) {
        fprintf(stderr, "deltadit_sim: %s (outside a launch)\n", msg.c_str());
        abort();
    }
    s->failed = true;
    s->error = "deltadit_sim: " + where(*s, named) + ": " + msg;
    if (env_abort()) {
        fprintf(stderr, "%s\n", s->error.c_str());
        abort();
    }
    Fiber* self = s->cur;
    ctx_switch(&self->ctx, &s->main_ctx);
    __builtin_unreachable();
}

void fail(const char* msg) { fail_fiber(cur(), msg); }

// ---- ready queue -------------------------------------------------------------------------------
static inline void q_push_back(Sched& s, Fiber* f) {
    s.q[(s.qhead + s.qlen++) & (s.q.size() - 1)] = f;
}
static inline void q_push_front(Sched& s, Fiber* f) {
    s.qhead = (s.qhead - 1) & (s.q.size() - 1);
    s.q[s.qhead] = f;
    ++s.qlen;
}
static inline Fiber* q_pop(Sched& s) {
    if (!s.qlen) return nullptr;
    Fiber* f = s.q[s.qhead];
    s.qhead = (s.qhead + 1) & (s.q.size() - 1);
    --s.qlen;
    return f;
}

static std::string deadlock_msg(Sched& s) {
    std::string m = fmt("deadlock: no thread can run; %u of %u threads alive, %u wait at __syncthreads",
                        s.live, s.nthreads, s.at_bar);
    int shown = 0;
    for (Warp& w : s.warps)
        for (int i = 0; i < w.ngroups && shown < 4; ++i, ++shown) {
            const Group& g = w.groups[i];
            m += fmt("; warp %u: lanes %s wait in %s (mask 0x%08x) for lanes %s", unsigned(&w - s.warps.data()),
                     lanes_str(g.arrived).c_str(), g.op->name, g.mask, lanes_str(g.mask & ~g.arrived).c_str());
        }
    return m;
}

[[noreturn]] __attribute__((noinline, cold)) static void deadlock(Sched& s, Fiber* self) {
    fail_fiber(self, deadlock_msg(s));
}

// The blocked (or exited) fiber `self` hands the CPU to the next ready fiber. Inlined into the
// barrier and collective paths (one frame less per switch: ~10% faster barriers).
static inline __attribute__((always_inline)) void run_next(Sched& s, Fiber* self) {
    Fiber* next = q_pop(s);
    if (!next) {
        if (s.live == 0) {
            ctx_switch(&self->ctx, &s.main_ctx);  // block finished
            __builtin_unreachable();
        }
        deadlock(s, self);
    }
    s.cur = next;
    next->state = St::Running;
    tl_threadIdx = next->tidx;
    ctx_switch(&self->ctx, &next->ctx);
    // Resumed: whoever switched here set s.cur and tl_threadIdx.
}

// ---- block barrier -----------------------------------------------------------------------------
static void reshuffle(Sched& s) {
    for (size_t i = s.order.size(); i > 1; --i) {
        s.rng ^= s.rng >> 12, s.rng ^= s.rng << 25, s.rng ^= s.rng >> 27;  // xorshift64*
        size_t j = (s.rng * 0x2545F4914F6CDD1DULL >> 33) % i;
        std::swap(s.order[i - 1], s.order[j]);
    }
}

static void release_barrier(Sched& s, Fiber* self) {
    int r = s.bar_kind == 1 ? s.bar_count : s.bar_kind == 2 ? s.bar_and : s.bar_kind == 3 ? s.bar_or : 0;
    if (s.order_mode == 2) reshuffle(s);
    for (unsigned tid : s.order) {
        Fiber& g = s.fibers[tid];
        if (g.state != St::AtBar) continue;
        g.bar_result = r;
        if (&g == self) {
            g.state = St::Running;
        } else {
            g.state = St::Ready;
            q_push_back(s, &g);
        }
    }
    for (Warp& w : s.warps) w.at_bar = 0;
    s.at_bar = 0;
    s.bar_kind = -1;
    s.bar_count = 0, s.bar_and = 1, s.bar_or = 0;
}

static const Group* group_of(const Warp& w, unsigned bit) {
    for (int i = 0; i < w.ngroups; ++i)
        if (w.groups[i].mask & bit) return &w.groups[i];
    return nullptr;
}

static const char* kBarNames[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                  "__syncthreads_or"};

// Cold paths out of line: the barrier's own frame stays small (it is on every fiber's stack).
[[noreturn]] __attribute__((noinline, cold)) static void bar_diverged(Fiber* f, const Warp& w, unsigned bit,
                                                                      int kind) {
    const Group* g = group_of(w, bit);
    fail_fiber(f, fmt("deadlock (divergent warp): reached %s while lanes %s of its warp wait for it in %s "
                      "(mask 0x%08x)", kBarNames[kind], lanes_str(g->arrived).c_str(), g->op->name, g->mask));
}
[[noreturn]] __attribute__((noinline, cold)) static void bar_mixed(Fiber* f, const Sched& s, int kind) {
    fail_fiber(f, fmt("reached %s while %u threads wait at %s", kBarNames[kind], s.at_bar, kBarNames[s.bar_kind]));
}

int syncthreads(int kind, int pred) {
    Sched& s = S();
    Fiber* f = s.cur;
    Warp& w = s.warps[f->warp];
    unsigned bit = 1u << f->lane;
    if (__builtin_expect(w.pending & bit, 0)) bar_diverged(f, w, bit, kind);
    if (s.bar_kind < 0) s.bar_kind = kind;
    else if (__builtin_expect(s.bar_kind != kind, 0)) bar_mixed(f, s, kind);
    s.bar_count += pred != 0;
    s.bar_and &= pred != 0;
    s.bar_or |= pred != 0;
    f->state = St::AtBar;
    w.at_bar |= bit;
    if (++s.at_bar == s.live) {
        release_barrier(s, f);
        return f->bar_result;
    }
    run_next(s, f);
    return f->bar_result;
}

// ---- warp collectives --------------------------------------------------------------------------
[[noreturn]] __attribute__((noinline, cold)) static void coll_bad_mask(Fiber* f, const Warp& w, const CollOp* op,
                                                                       unsigned mask) {
    unsigned bit = 1u << f->lane;
    if (!(mask & bit))
        fail_fiber(f, fmt("%s with mask 0x%08x, which does not include the calling lane", op->name, mask));
    if (mask & w.exited)
        fail_fiber(f, fmt("%s (mask 0x%08x) needs lanes %s, which have exited", op->name, mask,
                          lanes_str(mask & w.exited).c_str()));
    fail_fiber(f, fmt("deadlock (divergent warp): reached %s (mask 0x%08x) while lanes %s of the mask wait at "
                      "__syncthreads", op->name, mask, lanes_str(mask & w.at_bar).c_str()));
}
[[noreturn]] __attribute__((noinline, cold)) static void coll_diverged(Fiber* f, const CollOp* op, unsigned mask,
                                                                       const Group& h) {
    fail_fiber(f, fmt("divergent warp: reached %s (mask 0x%08x) while lanes %s wait in %s (mask 0x%08x)", op->name,
                      mask, lanes_str(h.arrived).c_str(), h.op->name, h.mask));
}

void warp_collective(const CollOp* op, unsigned mask) {
    Sched& s = S();
    Fiber* f = s.cur;
    Warp& w = s.warps[f->warp];
    unsigned bit = 1u << f->lane;
    mask &= w.exist;  // lanes past the end of a partial last warp do not exist
    if (__builtin_expect(!(mask & bit) || (mask & (w.exited | w.at_bar)), 0)) coll_bad_mask(f, w, op, mask);
    // Lanes of one warp may be in different collectives at once (e.g. half the warp in a
    // partial-mask ballot while the rest waits in a full-mask shuffle they will reach later).
    // Two collectives that each wait for a lane parked in the other can never complete.
    Group* g = nullptr;
    for (int i = 0; i < w.ngroups && !g; ++i)
        if (w.groups[i].op == op && w.groups[i].mask == mask) g = &w.groups[i];
    if (!g) {
        g = &w.groups[w.ngroups++];
        *g = Group{op, mask, 0};
        w.pending |= mask;
    }
    g->arrived |= bit;
    for (int i = 0; i < w.ngroups; ++i) {
        const Group& h = w.groups[i];
        if (&h != g && (h.arrived & mask) && (g->arrived & h.mask)) coll_diverged(f, op, mask, h);
    }
    if (g->arrived != mask) {
        f->state = St::InWarp;
        run_next(s, f);
        return;
    }
    // Last lane: retire the group, compute every lane's result, wake the others (in lane order,
    // ahead of other warps, so a warp tends to run together).
    *g = w.groups[--w.ngroups];
    w.pending = 0;
    for (int i = 0; i < w.ngroups; ++i) w.pending |= w.groups[i].mask;
    op->run(w, mask);
    unsigned others = mask & ~bit;
    for (int l = 31; l >= 0; --l)
        if (others >> l & 1) {
            w.lanes[l]->state = St::Ready;
            q_push_front(s, w.lanes[l]);
        }
}

// ---- thread exit -------------------------------------------------------------------------------
static void fiber_exit(Fiber* f) {
    Sched& s = S();
    Warp& w = s.warps[f->warp];
    unsigned bit = 1u << f->lane;
    cp_async_flush(f, f->cp_queue.size());  // outstanding copies still land on hardware
    wgmma_check_exit(f);
    f->state = St::Done;
    w.exited |= bit;
    --s.live;
    if (w.pending & bit) {
        const Group* g = group_of(w, bit);
        fail_fiber(f, fmt("exited while lanes %s of its warp wait for it in %s (mask 0x%08x)",
                          lanes_str(g->arrived).c_str(), g->op->name, g->mask));
    }
    // Exited threads no longer count at barriers (as on hardware).
    if (s.at_bar > 0 && s.at_bar == s.live) release_barrier(s, nullptr);
    run_next(s, f);
    __builtin_unreachable();
}

static void fiber_main(Fiber* f) {
    Sched& s = S();
    s.fn(s.params);
    fiber_exit(f);
}

// ---- memory ------------------------------------------------------------------------------------
void* dynamic_smem() { return tl_sched ? tl_sched->smem : nullptr; }

std::string check_shared(const void* p, size_t n) {
    const Sched& s = S();
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    uintptr_t lo = reinterpret_cast<uintptr_t>(s.smem), hi = lo + s.smem_size;
    if (a >= lo && a + n <= hi) return "";
    uintptr_t rlo = lo - kRedZone, rhi = lo + smem_rounded(s.smem_size) + kRedZone;
    if (a + n > rlo && a < rhi)
        return fmt("bytes [%ld, %ld) are outside the %zu bytes of dynamic shared memory", long(a - lo),
                   long(a + n - lo), s.smem_size);
    // Static __shared__ arrays are thread_local: they sit in this module's TLS block.
    uintptr_t tls = reinterpret_cast<uintptr_t>(&tl_tls_probe);
    if (a + (1u << 20) >= tls && a <= tls + (1u << 20)) return "";
    return fmt("address %p is not shared memory", p);
}

// ---- one block ---------------------------------------------------------------------------------
bool run_block(Sched& s) {
    size_t region = smem_rounded(s.smem_size) + 2 * kRedZone;
    memset(s.smem_region, 0xFF, region);  // 0xFFFF.. is a NaN in f32, bf16 and f16
    for (unsigned t = 0; t < s.nthreads; ++t) {
        Fiber& f = s.fibers[t];
        f.state = St::Ready;
        f.cp_queue.clear(), f.cp_groups.clear(), f.cp_done = 0, f.cp_trace.clear();
        f.wg_queue.clear(), f.wg_groups.clear(), f.wg_fenced = false;
        ctx_init(&f, s.stack_size, fiber_main);
    }
    for (Warp& w : s.warps) w.exited = w.at_bar = w.pending = 0, w.ngroups = 0;
    s.live = s.nthreads, s.at_bar = 0, s.bar_kind = -1, s.bar_count = 0, s.bar_and = 1, s.bar_or = 0;
    if (s.order_mode == 2) {
        s.rng = (uint64_t(s.seed) + 1) * 0x9E3779B97F4A7C15ULL ^
                (uint64_t(s.bidx.x) | uint64_t(s.bidx.y) << 24 | uint64_t(s.bidx.z) << 44);
        if (!s.rng) s.rng = 1;
        reshuffle(s);
    }
    s.qhead = s.qlen = 0;
    for (unsigned t : s.order) q_push_back(s, &s.fibers[t]);
    tl_blockIdx = s.bidx;
    s.failed = false;
    Fiber* first = q_pop(s);
    s.cur = first;
    first->state = St::Running;
    tl_threadIdx = first->tidx;
    ctx_switch(&s.main_ctx, &first->ctx);
    s.cur = nullptr;
    if (s.failed) return false;
    if (smem_stats_on()) smem_count_cp_async_block(s);
    // Red zones: a plain store outside dynamic shared memory shows up as a changed poison byte.
    const unsigned char* r = s.smem_region;
    auto scan = [&](size_t from, size_t to) {  // 8-byte words first, bytes to locate
        for (size_t i = from; i < to; i += 8) {
            uint64_t w;
            memcpy(&w, r + i, 8);
            if (w == ~uint64_t(0)) continue;
            for (size_t k = i; k < i + 8; ++k)
                if (r[k] != 0xFF) return long(k);
        }
        return -1L;
    };
    size_t end = size_t(s.smem - r) + s.smem_size;  // the first byte after, rounded down to 8
    long bad = scan(0, kRedZone);
    if (bad < 0) {
        for (size_t k = end; k < ((end + 7) & ~size_t(7)); ++k)
            if (r[k] != 0xFF) { bad = long(k); break; }
    }
    if (bad < 0) bad = scan((end + 7) & ~size_t(7), region);
    if (bad >= 0) {
        s.error = "deltadit_sim: " + where(s, nullptr) +
                  fmt(": a store wrote byte %ld relative to dynamic shared memory of %zu bytes (out of bounds)",
                      bad - long(kRedZone), s.smem_size);
        return false;
    }
    return true;
}

}  // namespace deltadit_sim
