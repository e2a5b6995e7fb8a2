// Warp-level intrinsics: shuffles, votes, __syncwarp, match, redux. Each is a warp collective
// (sched.cpp): lanes deposit their operands in `cin`, the last lane of the mask computes every
// lane's `cout`.
#include "internal.h"

#include <algorithm>

namespace deltadit_sim {

struct ShflIn {
    unsigned char val[16];
    int32_t b;
    int32_t width;
};

// PTX ISA shfl.sync semantics with c = ((32 - width) << 8) | (up ? 0 : 0x1f): lanes read within
// their width-segment; up/down/bfly reading past the segment (or below it, for up) return the
// lane's own value. A source lane outside the mask is undefined on hardware; we return the own value.
template <int MODE> static void shfl_run(Warp& w, unsigned mask) {
    for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        const ShflIn* in = reinterpret_cast<const ShflIn*>(w.lanes[l]->cin);
        unsigned segmask = unsigned(32 - in->width) & 31u;
        unsigned cval = MODE == SHFL_UP ? 0u : 0x1fu;
        unsigned bval = unsigned(in->b) & 31u;
        int min_lane = int(l & segmask);
        int max_lane = int((l & segmask) | (cval & ~segmask));
        int j;
        bool ok;
        switch (MODE) {
        case SHFL_UP: j = int(l) - int(bval); ok = j >= max_lane; break;
        case SHFL_DOWN: j = int(l) + int(bval); ok = j <= max_lane; break;
        case SHFL_BFLY: j = int(l ^ bval); ok = j <= max_lane; break;
        default: j = min_lane | int(bval & ~segmask); ok = j <= max_lane; break;
        }
        if (!ok || !(mask >> j & 1)) j = int(l);
        memcpy(w.lanes[l]->cout, w.lanes[j]->cin, 16);
    }
}
static const CollOp kShfl[4] = {
    {"__shfl_sync", shfl_run<SHFL_IDX>},
    {"__shfl_up_sync", shfl_run<SHFL_UP>},
    {"__shfl_down_sync", shfl_run<SHFL_DOWN>},
    {"__shfl_xor_sync", shfl_run<SHFL_BFLY>},
};

void shfl(int mode, unsigned mask, const void* in, void* out, unsigned size, int b, int width) {
    Fiber* f = cur();
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail_fiber(f, std::string(kShfl[mode].name) + ": width must be a power of 2 in [1, 32], got " +
                          std::to_string(width));
    ShflIn* si = reinterpret_cast<ShflIn*>(f->cin);
    memcpy(si->val, in, size);
    si->b = b, si->width = width;
    warp_collective(&kShfl[mode], mask);
    memcpy(out, f->cout, size);
}

static void vote_run(Warp& w, unsigned mask) {
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l & 1) && w.lanes[l]->cin[0]) ballot |= 1u << l;
    for (unsigned l = 0; l < 32; ++l)
        if (mask >> l & 1) memcpy(w.lanes[l]->cout, &ballot, 4);
}
// Three ops with one body: ballot/any/all are different instructions, so lanes mixing them diverge.
static const CollOp kVote[3] = {
    {"__ballot_sync", vote_run}, {"__any_sync", vote_run}, {"__all_sync", vote_run}};

unsigned vote(int mode, unsigned mask, int pred) {
    Fiber* f = cur();
    f->cin[0] = pred != 0;
    warp_collective(&kVote[mode], mask);
    unsigned ballot;
    memcpy(&ballot, f->cout, 4);
    unsigned m = mask & S().warps[f->warp].exist;
    switch (mode) {
    case VOTE_ANY: return ballot != 0;
    case VOTE_ALL: return ballot == m;
    default: return ballot;
    }
}

static void nop_run(Warp&, unsigned) {}
static const CollOp kSyncwarp = {"__syncwarp", nop_run};
void syncwarp(unsigned mask) { warp_collective(&kSyncwarp, mask); }

unsigned activemask() {
    const Warp& w = S().warps[cur()->warp];
    return w.exist & ~w.exited;
}

static void match_run(Warp& w, unsigned mask) {
    for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        unsigned m = 0;
        for (unsigned k = 0; k < 32; ++k)
            if ((mask >> k & 1) && !memcmp(w.lanes[l]->cin, w.lanes[k]->cin, 16)) m |= 1u << k;
        memcpy(w.lanes[l]->cout, &m, 4);
    }
}
static const CollOp kMatch = {"__match_any_sync", match_run};

unsigned match_any(unsigned mask, const void* v, unsigned size) {
    Fiber* f = cur();
    memset(f->cin, 0, 16);
    memcpy(f->cin, v, size < 16 ? size : 16);
    warp_collective(&kMatch, mask);
    unsigned m;
    memcpy(&m, f->cout, 4);
    return m;
}

template <int OP, bool SIGNED> static void reduce_run(Warp& w, unsigned mask) {
    uint32_t acc = OP == RED_AND ? ~0u : OP == RED_MIN ? (SIGNED ? 0x7fffffffu : ~0u)
                 : OP == RED_MAX ? (SIGNED ? 0x80000000u : 0u) : 0u;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        uint32_t v;
        memcpy(&v, w.lanes[l]->cin, 4);
        switch (OP) {
        case RED_ADD: acc += v; break;
        case RED_MIN: acc = SIGNED ? uint32_t(std::min(int32_t(acc), int32_t(v))) : std::min(acc, v); break;
        case RED_MAX: acc = SIGNED ? uint32_t(std::max(int32_t(acc), int32_t(v))) : std::max(acc, v); break;
        case RED_AND: acc &= v; break;
        case RED_OR: acc |= v; break;
        default: acc ^= v; break;
        }
    }
    for (unsigned l = 0; l < 32; ++l)
        if (mask >> l & 1) memcpy(w.lanes[l]->cout, &acc, 4);
}
static const CollOp kReduce[6][2] = {
    {{"__reduce_add_sync", reduce_run<RED_ADD, false>}, {"__reduce_add_sync", reduce_run<RED_ADD, true>}},
    {{"__reduce_min_sync", reduce_run<RED_MIN, false>}, {"__reduce_min_sync", reduce_run<RED_MIN, true>}},
    {{"__reduce_max_sync", reduce_run<RED_MAX, false>}, {"__reduce_max_sync", reduce_run<RED_MAX, true>}},
    {{"__reduce_and_sync", reduce_run<RED_AND, false>}, {"__reduce_and_sync", reduce_run<RED_AND, true>}},
    {{"__reduce_or_sync", reduce_run<RED_OR, false>}, {"__reduce_or_sync", reduce_run<RED_OR, true>}},
    {{"__reduce_xor_sync", reduce_run<RED_XOR, false>}, {"__reduce_xor_sync", reduce_run<RED_XOR, true>}},
};

uint32_t reduce(int op, int is_signed, unsigned mask, uint32_t v) {
    Fiber* f = cur();
    memcpy(f->cin, &v, 4);
    warp_collective(&kReduce[op][is_signed ? 1 : 0], mask);
    uint32_t r;
    memcpy(&r, f->cout, 4);
    return r;
}

}  // namespace deltadit_sim
