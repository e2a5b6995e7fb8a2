// Fibers: the context switch (x86-64 asm, ucontext elsewhere), fiber stacks with guard regions,
// and the message for a fiber stack overflow.
#include "internal.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <mutex>

namespace deltadit_sim {

// ---- context switch ----------------------------------------------------------------------------
#ifndef DELTADIT_SIM_USE_UCONTEXT
// Saves the callee-saved registers on the current stack, stores rsp in *save, loads `to` as rsp
// and pops the registers saved there (SysV x86-64: rbx, rbp, r12-r15 are callee-saved; the
// caller-saved ones are already spilled by the compiler around the call).
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

void ctx_init(Fiber* f, size_t stack_size, void (*entry)(Fiber*)) {
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
static __thread void (*tl_start_entry)(Fiber*);
static void uc_start(unsigned hi, unsigned lo) {
    Fiber* f = reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo));
    tl_start_entry(f);
}
void ctx_init(Fiber* f, size_t stack_size, void (*entry)(Fiber*)) {
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

bool ensure_stacks(Sched& s, unsigned n) {
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

void install_overflow_handler() {
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

}  // namespace deltadit_sim
