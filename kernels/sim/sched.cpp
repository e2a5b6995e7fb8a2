// The shim's scheduler: fibers, block barrier, per-warp collectives, diagnostics.
//
// One block = nthreads fibers on the launching OS thread. A fiber runs until it blocks (barrier,
// warp collective) or exits, then switches directly to the next ready fiber; the last thread to
// arrive at a barrier releases the others and keeps running, so a barrier phase costs about one
// context switch per thread. Nothing ready while threads are alive is a deadlock.
#include "internal.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <unordered_map>

extern "C" void deltadit_sim_register_all(void);

namespace deltadit_sim {

__thread ::uint3 tl_threadIdx;
__thread ::uint3 tl_blockIdx;
__thread ::uint3 tl_blockDim;
__thread ::uint3 tl_gridDim;
__thread Sched* tl_sched = nullptr;
static thread_local std::unique_ptr<Sched> tl_sched_owner;
static thread_local std::string tl_last_error;
// Warp order: process-wide (deltadit_sim_set_warp_order; default from DELTADIT_SIM_WARP_ORDER),
// unless the calling thread overrides it (the self-tests do, so that concurrent tests don't race).
static std::atomic<int> g_order_mode{-1};
static std::atomic<unsigned> g_order_seed{0};
static __thread int tl_order_override = -1;
static __thread unsigned tl_order_override_seed = 0;
static __thread unsigned tl_order_seed = 0;  // seed of the running launch
// Any TLS variable of this module: static __shared__ arrays (thread_local) live near it.
static __thread char tl_tls_probe;

// ---- context switch ----------------------------------------------------------------------------
#ifndef DELTADIT_SIM_USE_UCONTEXT
// Saves the callee-saved registers on the current stack, stores rsp in *save, loads `to` as rsp
// and pops the registers saved there (SysV x86-64: rbx, rbp, r12-r15 are callee-saved; the
// caller-saved ones are already spilled by the compiler around the call).
extern "C" void deltadit_sim_ctx_switch(void** save, void* to);
// First "return" of a new fiber lands here: rbx = Fiber*, r12 = entry function.
extern "C" void deltadit_sim_ctx_start(void);
asm(R"(
    .pushsection .text
    .globl deltadit_sim_ctx_switch
    .hidden deltadit_sim_ctx_switch
    .type deltadit_sim_ctx_switch,@function
    .p2align 4
deltadit_sim_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size deltadit_sim_ctx_switch, .-deltadit_sim_ctx_switch
    .globl deltadit_sim_ctx_start
    .hidden deltadit_sim_ctx_start
    .type deltadit_sim_ctx_start,@function
    .p2align 4
deltadit_sim_ctx_start:
    movq %rbx, %rdi
    callq *%r12
    ud2
    .size deltadit_sim_ctx_start, .-deltadit_sim_ctx_start
    .popsection
)");

static inline void ctx_switch(Ctx* from, Ctx* to) { deltadit_sim_ctx_switch(&from->sp, to->sp); }

static void ctx_init(Fiber* f, size_t stack_size, void (*entry)(Fiber*)) {
    // After `ret` into ctx_start, rsp must be 16-byte aligned so that the callee sees the ABI's
    // rsp % 16 == 8 at entry (SSE spills of locals rely on it).
    // The stacks are a multiple of the page size apart; staggering their tops keeps the fibers'
    // hot frames out of the same cache sets (3x faster barriers).
    uintptr_t stagger = (uintptr_t(f->tid) * 5 * 64) % 16384;
    uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack_lo) + stack_size - 64 - stagger) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top - 7 * sizeof(void*));
    sp[0] = nullptr;                                  // r15
    sp[1] = nullptr;                                  // r14
    sp[2] = nullptr;                                  // r13
    sp[3] = reinterpret_cast<void*>(entry);           // r12
    sp[4] = f;                                        // rbx
    sp[5] = nullptr;                                  // rbp
    sp[6] = reinterpret_cast<void*>(&deltadit_sim_ctx_start);  // return address
    f->ctx.sp = sp;
}
#else
// Portable fallback (slower: swapcontext makes a sigprocmask system call per switch).
static inline void ctx_switch(Ctx* from, Ctx* to) { swapcontext(&from->uc, &to->uc); }
static __thread void (*tl_start_entry)(Fiber*);
static void uc_start(unsigned hi, unsigned lo) {
    Fiber* f = reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo));
    tl_start_entry(f);
}
static void ctx_init(Fiber* f, size_t stack_size, void (*entry)(Fiber*)) {
    tl_start_entry = entry;
    getcontext(&f->ctx.uc);
    f->ctx.uc.uc_stack.ss_sp = f->stack_lo;
    f->ctx.uc.uc_stack.ss_size = stack_size;
    f->ctx.uc.uc_link = nullptr;
    uintptr_t p = reinterpret_cast<uintptr_t>(f);
    makecontext(&f->ctx.uc, reinterpret_cast<void (*)()>(uc_start), 2, unsigned(p >> 32),
                unsigned(p & 0xffffffffu));
}
#endif

// Raw cost of one switch: two contexts ping-pong `n` times each way; returns seconds per switch.
static __thread Ctx* tl_bench_ctx[2];
static __thread long tl_bench_left;
static void bench_fiber(Fiber*) {
    for (;;) {
        --tl_bench_left;
        ctx_switch(tl_bench_ctx[1], tl_bench_ctx[0]);
    }
}
double bench_switch(long n) {
    Fiber f;
    std::vector<char> stack(1 << 16);
    f.stack_lo = stack.data();
    ctx_init(&f, stack.size(), bench_fiber);
    Ctx main_ctx;
    tl_bench_ctx[0] = &main_ctx, tl_bench_ctx[1] = &f.ctx, tl_bench_left = n;
    auto t0 = std::chrono::steady_clock::now();
    while (tl_bench_left > 0) ctx_switch(&main_ctx, &f.ctx);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(2 * n);
}

// ---- messages ----------------------------------------------------------------------------------
static std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
static std::string fmt(const char* f, ...) {
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

static bool env_abort() {
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

static size_t smem_rounded(size_t n) { return (n + 127) & ~size_t(127); }

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

Sched::~Sched() {
    if (stacks) munmap(stacks, nstacks * (stack_size + kGuard));
    free(smem_region);
}

// Fiber stack overflow: a fault in a guard page below a fiber stack gets a message instead of a
// bare SIGSEGV. Other faults go to the previous handler (Rust's stack-overflow handler, or the
// default action). The handler needs an alternate signal stack: Rust threads have one; other
// threads get one here.
static struct sigaction g_prev_segv;
static void segv_handler(int sig, siginfo_t* si, void* uc) {
    const Sched* s = tl_sched;
    if (s && s->stacks) {
        uintptr_t a = reinterpret_cast<uintptr_t>(si->si_addr), lo = reinterpret_cast<uintptr_t>(s->stacks);
        size_t per = s->stack_size + kGuard;
        if (a >= lo && a < lo + s->nstacks * per && (a - lo) % per < kGuard) {
            static const char m1[] = "deltadit_sim: fiber stack overflow in kernel '";
            static const char m2[] = "' (raise DELTADIT_SIM_STACK_KB; default 256)\n";
            ssize_t r = write(2, m1, sizeof m1 - 1);
            if (s->kname) r = write(2, s->kname, strlen(s->kname));
            r = write(2, m2, sizeof m2 - 1);
            (void)r;
            abort();
        }
    }
    if (g_prev_segv.sa_flags & SA_SIGINFO) {
        if (g_prev_segv.sa_sigaction) return g_prev_segv.sa_sigaction(sig, si, uc);
    } else if (g_prev_segv.sa_handler != SIG_DFL && g_prev_segv.sa_handler != SIG_IGN) {
        return g_prev_segv.sa_handler(sig);
    }
    signal(sig, SIG_DFL);  // return and fault again with the default action
}

static void install_overflow_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = segv_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_prev_segv);
    });
    stack_t cur;
    if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
        static thread_local std::vector<char> alt(1 << 16);  // lives as long as the thread
        stack_t ss;
        ss.ss_sp = alt.data(), ss.ss_size = alt.size(), ss.ss_flags = 0;
        sigaltstack(&ss, nullptr);
    }
}

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

static bool ensure_stacks(Sched& s, unsigned n) {
    if (s.nstacks >= n) return true;
    size_t per = s.stack_size + kGuard;
    if (s.stacks) munmap(s.stacks, s.nstacks * per);
    s.stacks = nullptr, s.nstacks = 0;
    n = (n + 127) & ~127u;
    void* m = mmap(nullptr, n * per, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return false;
    s.stacks = static_cast<char*>(m), s.nstacks = n;
    for (unsigned i = 0; i < n; ++i) mprotect(s.stacks + i * per, kGuard, PROT_NONE);  // overflow guard
    return true;
}

// ---- launch ------------------------------------------------------------------------------------
struct Entry {
    size_t params_size;
    void (*fn)(const void*);
};
static std::mutex g_reg_mutex;
static std::unordered_map<std::string, Entry>& registry() {
    static std::unordered_map<std::string, Entry> m;
    return m;
}

void register_kernel(const char* name, size_t params_size, void (*fn)(const void*)) {
    std::lock_guard<std::mutex> lock(g_reg_mutex);
    if (!registry().emplace(name, Entry{params_size, fn}).second)
        fprintf(stderr, "deltadit_sim: kernel '%s' registered twice; keeping the first\n", name);
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

static bool run_block(Sched& s) {
    size_t region = smem_rounded(s.smem_size) + 2 * kRedZone;
    memset(s.smem_region, 0xFF, region);  // 0xFFFF.. is a NaN in f32, bf16 and f16
    for (unsigned t = 0; t < s.nthreads; ++t) {
        Fiber& f = s.fibers[t];
        f.state = St::Ready;
        f.cp_queue.clear(), f.cp_groups.clear(), f.cp_done = 0;
        ctx_init(&f, s.stack_size, fiber_main);
    }
    for (Warp& w : s.warps) w.exited = w.at_bar = w.pending = 0, w.ngroups = 0;
    s.live = s.nthreads, s.at_bar = 0, s.bar_kind = -1, s.bar_count = 0, s.bar_and = 1, s.bar_or = 0;
    if (s.order_mode == 2) {
        s.rng = (uint64_t(tl_order_seed) + 1) * 0x9E3779B97F4A7C15ULL ^
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

using namespace deltadit_sim;

extern "C" const char* deltadit_sim_last_error(void) { return tl_last_error.c_str(); }

extern "C" void deltadit_sim_set_warp_order(int warp_order, unsigned seed) {
    g_order_seed = seed;
    g_order_mode = warp_order < 0 || warp_order > 2 ? 0 : warp_order;
}

namespace deltadit_sim {
void set_thread_warp_order(int warp_order, unsigned seed) {
    tl_order_override = warp_order < 0 || warp_order > 2 ? -1 : warp_order;
    tl_order_override_seed = seed;
}
}  // namespace deltadit_sim

extern "C" int deltadit_sim_launch(const char* name, const void* params, size_t params_size, unsigned gx,
                                   unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                   size_t dyn_smem) {
    static std::once_flag once;
    std::call_once(once, [] { deltadit_sim_register_all(); });
    tl_last_error.clear();
    Entry e;
    {
        std::lock_guard<std::mutex> lock(g_reg_mutex);
        auto it = registry().find(name ? name : "");
        if (it == registry().end()) return report(fmt("deltadit_sim: unknown kernel '%s'", name ? name : "(null)"));
        e = it->second;
    }
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
        s.order_mode = tl_order_override, tl_order_seed = tl_order_override_seed;
    } else {
        static std::once_flag env_once;
        std::call_once(env_once, [] {
            unsigned seed;
            int m = default_order_mode(&seed);
            int expect = -1;
            if (g_order_mode.compare_exchange_strong(expect, m)) g_order_seed = seed;
        });
        s.order_mode = g_order_mode.load(), tl_order_seed = g_order_seed.load();
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
