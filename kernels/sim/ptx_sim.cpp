// Emulation of the PTX instructions wrapped by kernels/ptx.cuh: mma.sync m16n8k16 (bf16/f16 in,
// f32 accumulate), ldmatrix (x1/x2/x4, .trans) and cp.async (16 bytes, commit/wait groups).
// Fragment layouts: PTX ISA "Matrix Fragments for mma.m16n8k16", summarised in SIMT_SHIM.md.
#include "internal.h"

namespace deltadit_sim {

static std::string hex(const void* p) {
    char b[32];
    snprintf(b, sizeof b, "%p", p);
    return b;
}

static inline float bf16_bits_to_f32(uint32_t h) {
    uint32_t u = h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float f16_bits_to_f32(uint32_t h) {
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);  // inf / NaN
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else {  // subnormal: renormalise
        int e = -1;
        do { man <<= 1, ++e; } while (!(man & 0x400));
        u = sign | uint32_t(112 - e) << 23 | (man & 0x3ff) << 13;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 ----------------------------
struct MmaIn {
    uint32_t a[4];
    uint32_t b[2];
};

// Builds A (16x16) and B (16x8) from the 32 lanes' fragments and writes each lane's four dot
// products (without C) as doubles: bf16/f16 products are exact, so the sum is accurate and the
// lane rounds once after adding its C. The tensor core's summation order is unspecified anyway.
template <bool F16> static void mma_run(Warp& w, unsigned) {
    double A[16][16], Bt[8][16];  // Bt[n][k]: both operands contiguous along k
    auto cvt = [](uint32_t h) { return double(F16 ? f16_bits_to_f32(h) : bf16_bits_to_f32(h)); };
    for (unsigned l = 0; l < 32; ++l) {
        const MmaIn* in = reinterpret_cast<const MmaIn*>(w.lanes[l]->cin);
        unsigned g = l >> 2, t = l & 3;
        for (unsigned i = 0; i < 4; ++i) {  // a_i: row g (+8 for odd i), cols 2t, 2t+1 (+8 for i >= 2)
            unsigned r = g + 8 * (i & 1), k = 2 * t + 8 * (i >> 1);
            A[r][k] = cvt(in->a[i] & 0xffff);
            A[r][k + 1] = cvt(in->a[i] >> 16);
        }
        for (unsigned i = 0; i < 2; ++i) {  // b_i: k = 2t (+8 for i = 1) and k + 1, column n = g
            unsigned k = 2 * t + 8 * i;
            Bt[g][k] = cvt(in->b[i] & 0xffff);
            Bt[g][k + 1] = cvt(in->b[i] >> 16);
        }
    }
    for (unsigned l = 0; l < 32; ++l) {
        unsigned g = l >> 2, t = l & 3;
        double out[4];
        for (unsigned i = 0; i < 4; ++i) {  // c_i / d_i: row g (+8 for i >= 2), col 2t + (i & 1)
            const double* a = A[g + 8 * (i >> 1)];
            const double* b = Bt[2 * t + (i & 1)];
            double acc = 0;
            for (unsigned k = 0; k < 16; ++k) acc += a[k] * b[k];
            out[i] = acc;
        }
        memcpy(w.lanes[l]->cout, out, sizeof out);
    }
}
static const CollOp kMmaBf16 = {"mma.sync.m16n8k16.bf16", mma_run<false>};
static const CollOp kMmaF16 = {"mma.sync.m16n8k16.f16", mma_run<true>};

static void need_full_warp(Fiber* f, const char* what) {
    const Warp& w = S().warps[f->warp];
    if (w.exist != ~0u)
        fail_fiber(f, std::string(what) + " needs all 32 lanes, but this warp has only lanes " + lanes_str(w.exist));
}

void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4], bool f16) {
    Fiber* f = cur();
    const CollOp* op = f16 ? &kMmaF16 : &kMmaBf16;
    need_full_warp(f, op->name);
    MmaIn* in = reinterpret_cast<MmaIn*>(f->cin);
    memcpy(in->a, a, 16);
    memcpy(in->b, b, 8);
    float cc[4] = {c[0], c[1], c[2], c[3]};  // d may alias c
    warp_collective(op, ~0u);
    if (f->lane == 0 && smem_stats_on()) smem_count_mma();
    double acc[4];
    memcpy(acc, f->cout, sizeof acc);
    for (int i = 0; i < 4; ++i) d[i] = float(acc[i] + double(cc[i]));
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16 -----------------------------------
// Lanes 8j..8j+7 give the row addresses of matrix j (16-byte rows). Register j of lane L holds
// matrix j, row L/4, cols 2(L%4), 2(L%4)+1; with .trans it holds M_j[2(L%4)][L/4] (low half) and
// M_j[2(L%4)+1][L/4] (high half).
template <int NUM, bool TRANS> static void ldmatrix_run(Warp& w, unsigned) {
    static const char* names[2][3] = {{"ldmatrix.x1", "ldmatrix.x2", "ldmatrix.x4"},
                                      {"ldmatrix.x1.trans", "ldmatrix.x2.trans", "ldmatrix.x4.trans"}};
    const char* name = names[TRANS][NUM == 1 ? 0 : NUM == 2 ? 1 : 2];
    const unsigned char* rows[32];
    for (unsigned l = 0; l < 8 * NUM; ++l) {
        memcpy(&rows[l], w.lanes[l]->cin, sizeof(void*));
        if (reinterpret_cast<uintptr_t>(rows[l]) & 15)
            fail_fiber(w.lanes[l], std::string(name) + ": row address " + hex(rows[l]) +
                                       " (lane " + std::to_string(l) + ") is not 16-byte aligned");
        std::string bad = check_shared(rows[l], 16);
        if (!bad.empty())
            fail_fiber(w.lanes[l], std::string(name) + ": row of lane " + std::to_string(l) + ": " + bad);
    }
    if (smem_stats_on()) smem_count_ldmatrix(rows, NUM);
    for (unsigned l = 0; l < 32; ++l) {
        uint32_t r[4];
        for (unsigned j = 0; j < NUM; ++j) {
            if (!TRANS) {
                memcpy(&r[j], rows[8 * j + l / 4] + 4 * (l % 4), 4);
            } else {
                uint16_t lo, hi;
                memcpy(&lo, rows[8 * j + 2 * (l % 4)] + 2 * (l / 4), 2);
                memcpy(&hi, rows[8 * j + 2 * (l % 4) + 1] + 2 * (l / 4), 2);
                r[j] = uint32_t(lo) | uint32_t(hi) << 16;
            }
        }
        memcpy(w.lanes[l]->cout, r, 4 * NUM);
    }
}
static const CollOp kLdmatrix[2][3] = {
    {{"ldmatrix.x1", ldmatrix_run<1, false>}, {"ldmatrix.x2", ldmatrix_run<2, false>},
     {"ldmatrix.x4", ldmatrix_run<4, false>}},
    {{"ldmatrix.x1.trans", ldmatrix_run<1, true>}, {"ldmatrix.x2.trans", ldmatrix_run<2, true>},
     {"ldmatrix.x4.trans", ldmatrix_run<4, true>}},
};

void ldmatrix(uint32_t* r, const void* row_ptr, int num, bool trans) {
    Fiber* f = cur();
    const CollOp* op = &kLdmatrix[trans][num == 1 ? 0 : num == 2 ? 1 : 2];
    need_full_warp(f, op->name);
    memcpy(f->cin, &row_ptr, sizeof(void*));
    warp_collective(op, ~0u);
    memcpy(r, f->cout, 4 * size_t(num));
}

// ---- cp.async.cg.shared.global 16 bytes + commit_group / wait_group ----------------------------
// Copies are queued per thread and performed when a wait completes their group, so a kernel that
// reads the destination before the matching wait sees the poison (or stale data), as a GPU may.
void cp_async_16(void* smem, const void* gmem, bool valid) {
    Fiber* f = cur();
    if (reinterpret_cast<uintptr_t>(smem) & 15)
        fail_fiber(f, "cp.async: shared destination " + hex(smem) + " is not 16-byte aligned");
    if (valid && (reinterpret_cast<uintptr_t>(gmem) & 15))
        fail_fiber(f, "cp.async: global source " + hex(gmem) + " is not 16-byte aligned");
    std::string bad = check_shared(smem, 16);
    if (!bad.empty()) fail_fiber(f, "cp.async destination: " + bad);
    f->cp_queue.push_back(CpCopy{smem, gmem, valid});
    if (smem_stats_on()) f->cp_trace.push_back(reinterpret_cast<uintptr_t>(smem));
}

void cp_async_flush(Fiber* f, size_t upto) {
    for (size_t i = f->cp_done; i < upto; ++i) {
        const CpCopy& c = f->cp_queue[i];
        if (c.valid) memcpy(c.dst, c.src, 16);
        else memset(c.dst, 0, 16);
    }
    if (upto > f->cp_done) f->cp_done = upto;
    if (f->cp_done == f->cp_queue.size() && f->cp_groups.empty()) f->cp_queue.clear(), f->cp_done = 0;
}

void cp_async_commit() {
    Fiber* f = cur();
    f->cp_groups.push_back(f->cp_queue.size());
}

// wait_group n: all but the newest n committed groups are complete (uncommitted copies are not).
void cp_async_wait(int n) {
    Fiber* f = cur();
    size_t g = f->cp_groups.size();
    if (g <= size_t(n < 0 ? 0 : n)) return;
    size_t done = g - size_t(n);
    size_t upto = f->cp_groups[done - 1];
    f->cp_groups.erase(f->cp_groups.begin(), f->cp_groups.begin() + long(done));
    cp_async_flush(f, upto);
}

// cp.async.wait_all = commit_group; wait_group 0.
void cp_async_wait_all() {
    cp_async_commit();
    cp_async_wait(0);
}

}  // namespace deltadit_sim
