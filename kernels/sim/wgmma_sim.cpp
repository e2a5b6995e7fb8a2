// Emulation of sm_90a's warpgroup MMA, as wrapped by kernels/wgmma.cuh:
// wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16} (D += A·B) with A from shared memory (a matrix
// descriptor) or from registers, B from shared memory, and wgmma.fence / commit_group /
// wait_group. Only the no-swizzle ("interleave") shared-memory layout is emulated; a descriptor
// asking for a swizzle fails the launch.
//
// Layouts (PTX ISA 9.7.15.5.1, "Register Fragments and Shared Memory Matrix Layouts"):
//  * Warp w of the warpgroup (warp index % 4) owns rows 16w .. 16w + 15 of A and of D; within
//    the warp both follow mma.m16n8k16: a_i = (row g + 8(i & 1), k = 2t + 8(i >> 1), +1) and
//    d[4j + i] = (row g + 8(i >> 1), col 8j + 2t + (i & 1)), with g = lane / 4, t = lane % 4.
//  * Shared memory holds 8 × 16-byte core matrices (8 rows of eight 16-bit elements, 128
//    contiguous bytes). K-major (A; B with imm-trans-b = 0), canonical ((8,m),(T,2k)):((1T,SBO),(1,LBO)):
//    element (mn, k) at start + (mn/8)·SBO + (k/8)·LBO + (mn%8)·16 + (k%8)·2.
//    MN-major (B with imm-trans-b = 1), canonical ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)):
//    element (n, k) at start + (n/8)·SBO + (k/8)·LBO + (k%8)·16 + (n%8)·2.
//  * Descriptor: bits 0-13 start address >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4, 62-63 swizzle
//    mode (0 = none). Shared addresses here are offsets into the block's dynamic shared memory.
//
// The ops of a group run when a wgmma.wait_group completes it (a warp collective, since each
// warp's 16 rows need only that warp's registers): shared memory and the accumulators are read
// then, not at issue, so a kernel that overwrites an operand buffer or touches the accumulators
// before the wait gets a wrong result here, as it may on a GPU. A fragments in registers are
// copied at issue and compared with the registers at the wait: a change fails the launch (the
// kernel must keep the array alive until the wait, as the registers must be on a GPU).
// The shim also requires a wgmma.fence before the first wgmma after the thread's start and after
// each wait (PTX requires one whenever the registers were touched in between; a kernel always
// does touch them after a wait).
#include "internal.h"

namespace deltadit_sim {

static inline float half_bits_to_f32(uint16_t h, bool f16) {
    if (!f16) {
        uint32_t u = uint32_t(h) << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    __half x;
    memcpy(&x, &h, 2);
    return __half2float(x);
}

uint32_t smem_addr(const void* p) {
    const Sched& s = S();
    uintptr_t a = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(s.smem);
    if (a < lo || a > lo + s.smem_size)
        fail_fiber(cur(), fmt("wgmma operand address %p is not in dynamic shared memory (the shim emulates "
                              "descriptors over dynamic shared memory only)", p));
    return uint32_t(a - lo);
}

struct Desc {
    uint32_t start, lbo, sbo;
};

static Desc decode(Fiber* f, uint64_t d, const char* which) {
    if (d >> 62)
        fail_fiber(f, fmt("wgmma: %s descriptor 0x%016llx asks for swizzle mode %u; the shim emulates only the "
                          "no-swizzle layout", which, (unsigned long long)d, unsigned(d >> 62)));
    return Desc{uint32_t(d & 0x3fff) << 4, uint32_t((d >> 16) & 0x3fff) << 4, uint32_t((d >> 32) & 0x3fff) << 4};
}

// One 16-bit element of the core-matrix layout at byte offset `off` of dynamic shared memory.
static double load(Fiber* f, uint32_t off, bool f16, const char* which) {
    const Sched& s = S();
    if (size_t(off) + 2 > s.smem_size)
        fail_fiber(f, fmt("wgmma: %s reads bytes [%u, %u), outside the %zu bytes of dynamic shared memory", which,
                          off, off + 2, s.smem_size));
    uint16_t h;
    memcpy(&h, s.smem + off, 2);
    return double(half_bits_to_f32(h, f16));
}

static void run_op(Warp& w, size_t i) {
    Fiber* f0 = w.lanes[0];
    const WgmmaOp& op = f0->wg_queue[i];
    for (unsigned l = 1; l < 32; ++l) {
        const WgmmaOp& o = w.lanes[l]->wg_queue[i];
        if (o.n != op.n || o.a_in_regs != op.a_in_regs || o.f16 != op.f16 || o.trans_b != op.trans_b ||
            o.desc_b != op.desc_b || (!op.a_in_regs && o.desc_a != op.desc_a))
            fail_fiber(w.lanes[l], fmt("wgmma #%zu of the group: lane %u's operands (N, descriptors, transpose, "
                                       "type) differ from lane 0's; they must be warpgroup-uniform",
                                       i, l));
    }
    const int n = op.n;
    const unsigned wq = f0->warp % 4;  // this warp's 16 rows of the warpgroup's 64
    double A[16][16];
    if (op.a_in_regs) {
        for (unsigned l = 0; l < 32; ++l) {
            const WgmmaOp& o = w.lanes[l]->wg_queue[i];
            if (memcmp(o.a, o.a_regs, sizeof o.a))
                fail_fiber(w.lanes[l], fmt("wgmma #%zu of the group: its A fragment registers changed before the "
                                           "wgmma.wait_group that completes it", i));
            const uint32_t* a = o.a;
            unsigned g = l >> 2, t = l & 3;
            for (unsigned r = 0; r < 4; ++r) {
                unsigned row = g + 8 * (r & 1), k = 2 * t + 8 * (r >> 1);
                A[row][k] = half_bits_to_f32(uint16_t(a[r] & 0xffff), op.f16);
                A[row][k + 1] = half_bits_to_f32(uint16_t(a[r] >> 16), op.f16);
            }
        }
    } else {
        Desc d = decode(f0, op.desc_a, "A");
        for (unsigned r = 0; r < 16; ++r) {
            unsigned m = 16 * wq + r;
            for (unsigned k = 0; k < 16; ++k)
                A[r][k] = load(f0, d.start + (m / 8) * d.sbo + (k / 8) * d.lbo + (m % 8) * 16 + (k % 8) * 2, op.f16, "A");
        }
    }
    Desc db = decode(f0, op.desc_b, "B");
    std::vector<double> Bt(size_t(n) * 16);  // Bt[col][k]
    for (int c = 0; c < n; ++c)
        for (unsigned k = 0; k < 16; ++k) {
            uint32_t off = op.trans_b ? db.start + (c / 8) * db.sbo + (k / 8) * db.lbo + (k % 8) * 16 + (c % 8) * 2
                                      : db.start + (c / 8) * db.sbo + (k / 8) * db.lbo + (c % 8) * 16 + (k % 8) * 2;
            Bt[size_t(c) * 16 + k] = load(f0, off, op.f16, "B");
        }
    for (unsigned l = 0; l < 32; ++l) {
        float* d = w.lanes[l]->wg_queue[i].d;
        unsigned g = l >> 2, t = l & 3;
        for (int j = 0; j < n / 8; ++j)
            for (unsigned e = 0; e < 4; ++e) {
                const double* a = A[g + 8 * (e >> 1)];
                const double* b = &Bt[size_t(8 * j + 2 * t + (e & 1)) * 16];
                double acc = double(d[4 * j + e]);
                for (unsigned k = 0; k < 16; ++k) acc += a[k] * b[k];
                d[4 * j + e] = float(acc);
            }
    }
}

void wgmma_fence() { cur()->wg_fenced = true; }

void wgmma_issue(float* d, int n, const uint32_t* a, uint64_t desc_a, uint64_t desc_b, int trans_b, bool f16) {
    Fiber* f = cur();
    const Sched& s = S();
    if (s.warps[f->warp].exist != ~0u || s.nthreads % 128 != 0)
        fail_fiber(f, fmt("wgmma.mma_async needs whole warpgroups (4 full warps); the block has %u threads",
                          s.nthreads));
    if (!f->wg_fenced)
        fail_fiber(f, "wgmma.mma_async without a wgmma.fence since the thread started or its last wgmma.wait_group");
    if (n < 8 || n > 256 || n % 8 != 0) fail_fiber(f, fmt("wgmma: N = %d is not a multiple of 8 in [8, 256]", n));
    WgmmaOp op{};
    op.d = d, op.n = n, op.a_in_regs = a != nullptr, op.f16 = f16, op.trans_b = trans_b;
    op.desc_a = desc_a, op.desc_b = desc_b;
    if (a) memcpy(op.a, a, sizeof op.a), op.a_regs = a;
    f->wg_queue.push_back(op);
    if (smem_stats_on() && f->lane == 0 && f->warp % 4 == 0) smem_count_wgmma(n, a != nullptr);
}

void wgmma_commit() {
    Fiber* f = cur();
    f->wg_groups.push_back(f->wg_queue.size());
}

static void wait_run(Warp& w, unsigned) {
    Fiber* f0 = w.lanes[0];
    int n;
    memcpy(&n, f0->cin, sizeof n);
    for (unsigned l = 1; l < 32; ++l) {
        const Fiber* f = w.lanes[l];
        int nl;
        memcpy(&nl, f->cin, sizeof nl);
        if (nl != n || f->wg_groups != f0->wg_groups || f->wg_queue.size() != f0->wg_queue.size())
            fail_fiber(w.lanes[l], fmt("wgmma.wait_group %d: lane %u issued or committed a different wgmma sequence "
                                       "than lane 0 (or waits for %d)", n, l, nl));
    }
    size_t g = f0->wg_groups.size();
    if (g <= size_t(n)) return;
    size_t done = g - size_t(n), upto = f0->wg_groups[done - 1];
    for (size_t i = 0; i < upto; ++i) run_op(w, i);
    for (unsigned l = 0; l < 32; ++l) {
        Fiber* f = w.lanes[l];
        f->wg_queue.erase(f->wg_queue.begin(), f->wg_queue.begin() + long(upto));
        f->wg_groups.erase(f->wg_groups.begin(), f->wg_groups.begin() + long(done));
        for (size_t& e : f->wg_groups) e -= upto;
    }
}
static const CollOp kWgmmaWait = {"wgmma.wait_group", wait_run};

void wgmma_wait(int n) {
    Fiber* f = cur();
    if (S().warps[f->warp].exist != ~0u) fail_fiber(f, "wgmma.wait_group needs all 32 lanes of the warp");
    memcpy(f->cin, &n, sizeof n);
    warp_collective(&kWgmmaWait, ~0u);
    f->wg_fenced = false;
}

void wgmma_check_exit(Fiber* f) {
    if (!f->wg_queue.empty())
        fail_fiber(f, fmt("exited with %zu wgmma.mma_async op(s) not completed by a wgmma.wait_group",
                          f->wg_queue.size()));
}

}  // namespace deltadit_sim
