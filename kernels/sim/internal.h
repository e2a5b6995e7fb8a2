// Scheduler state shared by the shim's .cpp files (not seen by kernels).
#pragma once
#include "shim.h"

#include <string>
#include <vector>

#if !defined(__x86_64__) || defined(DELTADIT_SIM_UCONTEXT)
#define DELTADIT_SIM_USE_UCONTEXT 1
#include <ucontext.h>
#endif

namespace deltadit_sim {

struct Warp;
// A warp collective: once every lane of `mask` has arrived, the last one runs `run`, which reads
// each lane's `cin` and writes each lane's `cout`. Results go to the lanes' own fibers, so a lane
// that races ahead to the next collective cannot overwrite what a slower lane has yet to read.
struct CollOp {
    const char* name;
    void (*run)(Warp& w, unsigned mask);
};

enum class St : uint8_t { Ready, Running, AtBar, InWarp, Done };

struct Ctx {
#ifdef DELTADIT_SIM_USE_UCONTEXT
    ucontext_t uc;
#else
    void* sp = nullptr;  // saved stack pointer; callee-saved registers are on that stack
#endif
};

struct CpCopy {
    void* dst;
    const void* src;
    bool valid;  // false: zero-fill, read nothing
};

// One wgmma.mma_async of a lane, run when a wgmma.wait_group completes its group.
struct WgmmaOp {
    float* d;            // the lane's N/2 accumulators (its registers on hardware)
    int n;               // N of m64nNk16
    bool a_in_regs;      // A from registers (a[]) instead of shared memory (desc_a)
    bool f16;            // f16 inputs (else bf16)
    int trans_b;         // 1: B is N-major ("transposed")
    uint32_t a[4];       // A fragment, copied at issue
    const uint32_t* a_regs;  // the lane's A registers, compared with a[] at the wait
    uint64_t desc_a, desc_b;
};

struct Fiber {
    Ctx ctx;
    char* stack_lo = nullptr;
    ::uint3 tidx{};
    unsigned tid = 0, lane = 0, warp = 0;
    St state = St::Done;
    int bar_result = 0;
    alignas(16) unsigned char cin[64];
    alignas(16) unsigned char cout[64];
    // cp.async: copies are queued and performed at the wait that completes their group.
    std::vector<CpCopy> cp_queue;    // issued, not yet performed (from index cp_done on)
    std::vector<size_t> cp_groups;   // committed groups, oldest first: end index into cp_queue
    size_t cp_done = 0;
    std::vector<uintptr_t> cp_trace;  // cp.async destinations of this block, when counting banks
    // wgmma: issued ops not yet run, committed groups (end index into wg_queue), and whether a
    // wgmma.fence came since the start or the last wait (the shim requires one before an issue).
    std::vector<WgmmaOp> wg_queue;
    std::vector<size_t> wg_groups;
    bool wg_fenced = false;
};

struct Group {
    const CollOp* op;
    unsigned mask, arrived;
};

struct Warp {
    unsigned exist = 0;    // lanes that exist (the last warp of a block may be partial)
    unsigned exited = 0;
    unsigned at_bar = 0;   // lanes waiting at __syncthreads
    unsigned pending = 0;  // union of the masks of the collectives in progress
    int ngroups = 0;
    Group groups[32];
    Fiber* lanes[32];
};

// Per-OS-thread scheduler (launches on different threads are independent).
struct Sched {
    const char* kname = nullptr;
    void (*fn)(const void*) = nullptr;
    const void* params = nullptr;
    ::uint3 grid{}, block{}, bidx{};
    unsigned nthreads = 0, nwarps = 0;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    Fiber* cur = nullptr;
    Ctx main_ctx;
    // Ready queue: ring buffer of fibers (each is in it at most once).
    std::vector<Fiber*> q;
    unsigned qhead = 0, qlen = 0;
    // Block barrier.
    unsigned live = 0, at_bar = 0;
    int bar_kind = -1, bar_count = 0, bar_and = 1, bar_or = 0;
    // Warp order for tests: 0 in order, 1 reversed, 2 shuffled at every barrier (seeded).
    int order_mode = 0;
    unsigned seed = 0;
    uint64_t rng = 0;
    std::vector<unsigned> order;  // thread ids in the order barriers release them
    // Failure of the running launch.
    bool failed = false;
    std::string error;
    // Dynamic shared memory with red zones on both sides (checked after each block).
    unsigned char* smem_region = nullptr;
    size_t smem_cap = 0;
    unsigned char* smem = nullptr;
    size_t smem_size = 0;
    // Fiber stacks: one mapping, a guard region below each stack.
    char* stacks = nullptr;
    size_t stack_size = 0, nstacks = 0;

    ~Sched();
};

extern __thread Sched* tl_sched;
constexpr size_t kRedZone = 4096;
// Inaccessible bytes below each fiber stack: larger than any kernel frame, so an overflow faults
// in the guard instead of jumping into the neighbouring fiber's stack.
constexpr size_t kGuard = 64 << 10;

// fiber.cpp
#ifndef DELTADIT_SIM_USE_UCONTEXT
extern "C" void deltadit_sim_ctx_switch(void** save, void* to);  // asm
inline void ctx_switch(Ctx* from, Ctx* to) { deltadit_sim_ctx_switch(&from->sp, to->sp); }
#else
inline void ctx_switch(Ctx* from, Ctx* to) { swapcontext(&from->uc, &to->uc); }
#endif
// Prepares f to start in entry(f) on its stack at the next switch to it.
void ctx_init(Fiber* f, size_t stack_size, void (*entry)(Fiber*));
bool ensure_stacks(Sched& s, unsigned n);
void install_overflow_handler();

// sched.cpp
std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
bool env_abort();
inline size_t smem_rounded(size_t n) { return (n + 127) & ~size_t(127); }
// Runs block s.bidx of the current launch; false (s.error set) when a diagnostic fired.
bool run_block(Sched& s);
void warp_collective(const CollOp* op, unsigned mask);
[[noreturn]] void fail_fiber(Fiber* f, const std::string& msg);
std::string lanes_str(unsigned mask);
// Empty string when [p, p + n) is shared memory; otherwise what is wrong with it.
std::string check_shared(const void* p, size_t n);
void cp_async_flush(Fiber* f, size_t upto);
// Fails the launch when the exiting thread still has wgmma ops in flight (wgmma_sim.cpp).
void wgmma_check_exit(Fiber* f);
// Warp order of launches from the calling thread only (-1: back to the process-wide setting).
void set_thread_warp_order(int warp_order, unsigned seed);
// smem_traffic.cpp: bank accounting of ldmatrix rows and cp.async destinations (when turned on).
bool smem_stats_on();
void smem_count_ldmatrix(const unsigned char* const* rows, int num);
void smem_count_cp_async_block(Sched& s);
void smem_count_wgmma(int n, bool a_in_regs);  // once a warpgroup instruction
void smem_count_mma();                         // once a warp instruction
// Seconds per raw context switch (n round trips between two contexts).
double bench_switch(long n);

inline Sched& S() { return *tl_sched; }
inline Fiber* cur() { return tl_sched->cur; }

}  // namespace deltadit_sim
