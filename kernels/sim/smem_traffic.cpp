// Shared-memory accounting: the bank conflicts of the warp-wide 16-byte accesses the shim
// intercepts (the row reads of ldmatrix, the destination writes of cp.async), the operand bytes
// wgmma reads from shared memory, and the multiply-adds of wgmma and mma.sync, so a kernel's
// shared-memory traffic can be set against its tensor-core work without a GPU. Off unless the
// calling host thread turns it on (deltadit_sim_smem_stats_begin): it costs other launches nothing.
//
// The model (Hopper and Ampere alike): 32 banks of 4 bytes; a warp's 16-byte accesses are served
// in phases of 8 lanes (128 bytes, all banks), one phase per 8×16-byte matrix for ldmatrix. Within
// a phase, rows in the same 16-byte bank group (address bits 4..6) at different addresses take one
// wavefront each; equal addresses are one (broadcast). So a phase costs the largest number of
// distinct rows in one bank group, and a conflict-free phase costs 1.
//
// ldmatrix is a warp collective here, so its phases are exact. cp.async is issued per thread: the
// k-th cp.async of every lane of a warp (since the block started) is taken as one instruction,
// which holds for the kernels' copy loops (uniform trip counts; a lane that skips its last copy
// simply does not take part in it). Banks follow the host addresses: exact for dynamic shared
// memory (128-byte aligned, as on the GPU); static __shared__ arrays are thread_local here and
// only 16-byte aligned, so their counts are approximate.
#include "internal.h"

#include <algorithm>

namespace deltadit_sim {

struct SmemCount {
    uint64_t requests = 0, wavefronts = 0, ideal = 0;
};
struct SmemStats {
    bool on = false;
    SmemCount ldmatrix, cp_async;
    uint64_t wgmma_smem_bytes = 0, wgmma_macs = 0, mma_macs = 0;
};
static thread_local SmemStats tl_smem;

bool smem_stats_on() { return tl_smem.on; }

// Wavefronts of one phase of n ≤ 8 16-byte rows: the most distinct rows in one bank group.
static unsigned phase_wavefronts(const uintptr_t* rows, unsigned n) {
    uintptr_t seen[8];
    unsigned nseen = 0, per_group[8] = {}, worst = 0;
    for (unsigned i = 0; i < n; ++i) {
        bool repeat = false;
        for (unsigned k = 0; k < nseen && !repeat; ++k) repeat = seen[k] == rows[i];
        if (repeat) continue;  // a broadcast: the row is already being read/written
        seen[nseen++] = rows[i];
        worst = std::max(worst, ++per_group[(rows[i] >> 4) & 7]);
    }
    return worst;
}

void smem_count_ldmatrix(const unsigned char* const* rows, int num) {
    SmemCount& c = tl_smem.ldmatrix;
    c.requests += 1;
    for (int j = 0; j < num; ++j) {
        uintptr_t r[8];
        for (int i = 0; i < 8; ++i) r[i] = reinterpret_cast<uintptr_t>(rows[8 * j + i]);
        c.wavefronts += phase_wavefronts(r, 8);
        c.ideal += 1;
    }
}

void smem_count_wgmma(int n, bool a_in_regs) {
    tl_smem.wgmma_smem_bytes += uint64_t(a_in_regs ? 0 : 64 * 16 * 2) + uint64_t(n) * 16 * 2;
    tl_smem.wgmma_macs += uint64_t(64) * uint64_t(n) * 16;
}

void smem_count_mma() { tl_smem.mma_macs += 16 * 8 * 16; }

void smem_count_cp_async_block(Sched& s) {
    SmemCount& c = tl_smem.cp_async;
    for (const Warp& w : s.warps) {
        size_t calls = 0;
        for (unsigned l = 0; l < 32; ++l)
            if (w.exist >> l & 1) calls = std::max(calls, w.lanes[l]->cp_trace.size());
        for (size_t k = 0; k < calls; ++k) {
            c.requests += 1;
            for (unsigned q = 0; q < 4; ++q) {
                uintptr_t r[8];
                unsigned n = 0;
                for (unsigned l = 8 * q; l < 8 * q + 8; ++l)
                    if ((w.exist >> l & 1) && k < w.lanes[l]->cp_trace.size()) r[n++] = w.lanes[l]->cp_trace[k];
                c.wavefronts += phase_wavefronts(r, n);
                c.ideal += n ? 1 : 0;
            }
        }
    }
}

}  // namespace deltadit_sim

using namespace deltadit_sim;

extern "C" void deltadit_sim_smem_stats_begin(void) {
    tl_smem = SmemStats{};
    tl_smem.on = true;
}

extern "C" void deltadit_sim_smem_stats_end(DeltaditSimSmemStats* out) {
    const SmemStats s = tl_smem;
    tl_smem = SmemStats{};
    *out = DeltaditSimSmemStats{s.ldmatrix.requests, s.ldmatrix.wavefronts, s.ldmatrix.ideal,
                                s.cp_async.requests, s.cp_async.wavefronts, s.cp_async.ideal,
                                s.wgmma_smem_bytes,  s.wgmma_macs,          s.mma_macs};
}
