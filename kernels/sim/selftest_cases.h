// Host drivers of the portable shim self-tests: random inputs, a launch, a comparison with the
// operation's definition. Included by sim/selftest.cpp (shim) and sim/gpu_selftest.cu (GPU), which
// first define:
//   void* st_alloc(size_t bytes);  void st_free(void*);          host-visible memory
//   int st_launch(Case&, const char* name, <kernel>, const SimTestParams&, dim3 grid, dim3 block,
//                 size_t smem) via the ST_LAUNCH macro; 0 on success, else Case::last_error is set
//   bool ST_SHIM: true under the shim (checks that only the emulation guarantees).
#pragma once
#include "sim/selftest_kernels.cuh"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace simtest {

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
    uint64_t next() {  // splitmix64
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    uint32_t u32() { return uint32_t(next() >> 32); }
    int range(int n) { return int(next() % uint64_t(n)); }
    float normal() {
        double u1 = (double(next() >> 11) + 1.0) / 9007199254740993.0, u2 = double(next() >> 11) / 9007199254740992.0;
        return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    }
};

// One test run: the first failure, a summary, the buffers it allocated.
struct Case {
    std::string err, info, last_error;
    std::vector<void*> bufs;
    ~Case() {
        for (void* b : bufs) st_free(b);
    }
    bool ok() const { return err.empty(); }
    void fail(const char* f, ...) __attribute__((format(printf, 2, 3))) {
        if (!err.empty()) return;  // keep the first failure
        char b[1024];
        va_list ap;
        va_start(ap, f);
        vsnprintf(b, sizeof b, f, ap);
        va_end(ap);
        err = b;
    }
    void note(const char* f, ...) __attribute__((format(printf, 2, 3))) {
        char b[512];
        va_list ap;
        va_start(ap, f);
        vsnprintf(b, sizeof b, f, ap);
        va_end(ap);
        if (!info.empty()) info += "; ";
        info += b;
    }
    // Host-visible buffer of n elements, every byte set to `fill` (0xFF: NaN poison).
    template <typename U> U* alloc(size_t n, int fill = 0xFF) {
        void* p = st_alloc(n * sizeof(U) + 16);
        memset(p, fill, n * sizeof(U) + 16);
        bufs.push_back(p);
        return static_cast<U*>(p);
    }
};

#define ST_RUN(c, kernel, params, grid, block, smem)                                                   \
    (ST_LAUNCH(c, kernel, params, grid, block, smem) == 0                                              \
         ? true                                                                                        \
         : (c.fail("launch of " #kernel " failed: %s", c.last_error.c_str()), false))

inline float bf16_to_f32(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline float f16_to_f32(uint16_t h) {
    __half x;
    memcpy(static_cast<void*>(&x), &h, 2);
    return __half2float(x);
}
inline uint16_t f32_to_bf16(float f) {
    __nv_bfloat16 b = __float2bfloat16(f);
    uint16_t h;
    memcpy(&h, &b, 2);
    return h;
}
inline uint16_t f32_to_f16(float f) {
    __half b = __float2half(f);
    uint16_t h;
    memcpy(&h, &b, 2);
    return h;
}

// ---- barrier, geometry, exited threads ---------------------------------------------------------
inline void case_geometry(Case& c) {
    const dim3 grids[] = {dim3(3, 2, 2), dim3(1, 1, 1), dim3(5, 1, 1)};
    const dim3 blocks[] = {dim3(8, 4, 2), dim3(37, 1, 1), dim3(4, 4, 4)};
    for (int k = 0; k < 3; ++k) {
        dim3 g = grids[k], b = blocks[k];
        unsigned nb = g.x * g.y * g.z, nt = b.x * b.y * b.z;
        SimTestParams p{};
        unsigned* out = c.alloc<unsigned>(size_t(nb) * nt * 8);
        p.out0 = out;
        if (!ST_RUN(c, simtest_geometry, p, g, b, 0)) return;
        for (unsigned bz = 0; bz < g.z; ++bz)
            for (unsigned by = 0; by < g.y; ++by)
                for (unsigned bx = 0; bx < g.x; ++bx)
                    for (unsigned tz = 0; tz < b.z; ++tz)
                        for (unsigned ty = 0; ty < b.y; ++ty)
                            for (unsigned tx = 0; tx < b.x; ++tx) {
                                unsigned blk = bx + g.x * (by + g.y * bz), t = tx + b.x * (ty + b.y * tz);
                                const unsigned* o = out + (size_t(blk) * nt + t) * 8;
                                unsigned want[8] = {tx, ty, tz, bx, by, bz, b.x * 1000000 + b.y * 1000 + b.z,
                                                    g.x * 1000000 + g.y * 1000 + g.z};
                                for (int i = 0; i < 8; ++i)
                                    if (o[i] != want[i])
                                        return c.fail("grid (%u,%u,%u) block (%u,%u,%u): thread (%u,%u,%u) of block "
                                                      "(%u,%u,%u): slot %d is %u, want %u",
                                                      g.x, g.y, g.z, b.x, b.y, b.z, tx, ty, tz, bx, by, bz, i, o[i],
                                                      want[i]);
                            }
    }
    c.note("threadIdx/blockIdx/blockDim/gridDim for 3 grid x block shapes (1-D to 3-D, partial warps)");
}

inline void case_barrier(Case& c) {
    Rng rng(1);
    const dim3 blocks[] = {dim3(128, 1, 1), dim3(5, 7, 3), dim3(32, 8, 1)};
    const int phases = 200;
    for (const dim3& b : blocks) {
        unsigned n = b.x * b.y * b.z, nb = 3;
        unsigned* in = c.alloc<unsigned>(n * nb);
        for (unsigned i = 0; i < n * nb; ++i) in[i] = rng.u32();
        unsigned* out = c.alloc<unsigned>(n * nb);
        int* red = c.alloc<int>(n * nb * 3);
        SimTestParams p{};
        p.in0 = in, p.out0 = out, p.out1 = red, p.phases = phases;
        if (!ST_RUN(c, simtest_barrier, p, dim3(nb, 1, 1), b, n * sizeof(unsigned))) return;
        for (unsigned blk = 0; blk < nb; ++blk) {
            std::vector<unsigned> v(in + blk * n, in + (blk + 1) * n), d;
            for (int i = 0; i < phases; ++i) {
                d = v;
                for (unsigned t = 0; t < n; ++t) v[t] = v[t] * 1664525u + 1013904223u + d[(t + 7u * i + 1u) % n];
                d = v;
                for (unsigned t = 0; t < n; ++t) v[t] ^= d[(t * 3 + unsigned(i)) % n];
            }
            int cnt = 0;
            for (unsigned t = 0; t < n; ++t) cnt += v[t] & 1;
            for (unsigned t = 0; t < n; ++t) {
                if (out[blk * n + t] != v[t])
                    return c.fail("block (%u,%u,%u), block %u, thread %u: %u after %d phases, want %u", b.x, b.y, b.z,
                                  blk, t, out[blk * n + t], phases, v[t]);
                const int* r = red + (blk * n + t) * 3;
                if (r[0] != cnt || r[1] != (cnt == int(n)) || r[2] != (cnt > 0))
                    return c.fail("__syncthreads_count/and/or = %d/%d/%d, want %d/%d/%d", r[0], r[1], r[2], cnt,
                                  cnt == int(n), cnt > 0);
            }
        }
    }
    c.note("%d x 4 barrier phases through dynamic and template-static shared memory, 3 block shapes; "
           "__syncthreads_count/and/or", phases);
}

inline void case_exited(Case& c) {
    const unsigned n = 128, nb = 2;
    const int phases = 12;
    unsigned* out = c.alloc<unsigned>(n * nb);
    SimTestParams p{};
    p.out0 = out, p.phases = phases;
    if (!ST_RUN(c, simtest_exited, p, dim3(nb, 1, 1), dim3(n, 1, 1), n * 4)) return;
    for (unsigned blk = 0; blk < nb; ++blk) {
        std::vector<unsigned> v(n), d;
        for (unsigned t = 0; t < n; ++t) v[t] = t * 2654435761u + blk;
        for (int i = 0; i < phases; ++i) {
            d = v;
            for (unsigned t = 0; t < n; ++t)
                if (exited_alive(t, i)) v[t] = v[t] * 31u + d[exited_partner(t, i, n)];
        }
        for (unsigned t = 0; t < n; ++t) {
            unsigned got = out[blk * n + t];
            bool alive = exited_alive(t, phases - 1);
            if (alive && got != v[t]) return c.fail("block %u thread %u: %u, want %u", blk, t, got, v[t]);
            if (!alive && got != 0xFFFFFFFFu) return c.fail("exited thread %u wrote %u", t, got);
        }
    }
    c.note("a whole warp, every third thread and others mid-loop exit; %d barrier phases after", phases);
}

// ---- warp collectives --------------------------------------------------------------------------
// Reference: the CUDA programming guide's definitions (not the PTX formulation the shim uses).
inline unsigned shfl_src(int mode, unsigned l, int b, unsigned w) {
    switch (mode) {
    case 0: return (l / w) * w + (unsigned(b) & (w - 1));
    case 1: return (l % w) >= unsigned(b) ? l - unsigned(b) : l;
    case 2: return (l % w) + unsigned(b) < w ? l + unsigned(b) : l;
    default: {
        unsigned s = l ^ unsigned(b);
        return s < (l / w + 1) * w ? s : l;
    }
    }
}

inline void case_shfl(Case& c) {
    static const char* names[4] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
    Rng rng(2);
    const unsigned n = 64;
    int checked = 0;
    for (int mode = 0; mode < 4; ++mode)
        for (unsigned w = 1; w <= 32; w *= 2) {
            uint64_t* in = c.alloc<uint64_t>(n);
            int* bs = c.alloc<int>(n);
            for (unsigned t = 0; t < n; ++t) {
                in[t] = rng.next();
                // idx: any int (incl. negative and >= width); up/down/xor: 0..31, per lane.
                bs[t] = mode == 0 ? int(rng.u32() % 100) - 30 : rng.range(32);
                if (mode != 0 && t % 7 == 0) bs[t] = int(w) / 2;  // a typical reduction step
            }
            uint64_t* out = c.alloc<uint64_t>(n * 6);
            uint32_t* out1 = c.alloc<uint32_t>(n * 2);
            SimTestParams p{};
            p.in0 = in, p.in1 = bs, p.out0 = out, p.out1 = out1, p.mode = mode, p.width = int(w);
            if (!ST_RUN(c, simtest_shfl, p, dim3(1, 1, 1), dim3(n, 1, 1), 0)) return;
            for (unsigned t = 0; t < n; ++t) {
                unsigned l = t % 32, base = t - l;
                unsigned s = base + shfl_src(mode, l, mode == 0 ? bs[t] : bs[t], w);
                uint64_t x = in[s];
                uint32_t xu = uint32_t(x), xf = uint32_t(x >> 32), xi = uint32_t(x >> 16);
                uint64_t xd = x * 0x9E3779B97F4A7C15ull;
                uint64_t want[6] = {xu, xf, xi, x, xd, xu};
                for (int k = 0; k < 6; ++k) {
                    ++checked;
                    if (out[t * 6 + k] != want[k])
                        return c.fail("%s width %u, type %d: lane %u (b = %d) got 0x%llx, want 0x%llx (from lane %u)",
                                      names[mode], w, k, t, bs[t], (unsigned long long)out[t * 6 + k],
                                      (unsigned long long)want[k], s);
                }
                uint32_t w0 = (t / 32 == 1) ? uint32_t(in[t ^ 5]) : 0u;
                unsigned ps = l < 16 ? (l + 3 < 16 ? t + 3 : t) : (l - 16 >= 2 ? t - 2 : t);
                if (out1[t * 2] != w0)
                    return c.fail("__shfl_xor_sync inside if (warp == 1): lane %u got 0x%x, want 0x%x", t, out1[t * 2], w0);
                if (out1[t * 2 + 1] != uint32_t(in[ps]))
                    return c.fail("half-warp shuffles with masks 0x0000ffff / 0xffff0000: lane %u got 0x%x, want 0x%x",
                                  t, out1[t * 2 + 1], uint32_t(in[ps]));
            }
        }
    c.note("idx/up/down/xor x widths 1..32 x u32/float/int/u64/double/bf16x2 (%d values); a shuffle inside "
           "if (warp == 1); two partial-mask groups in one warp", checked);
}

inline void case_vote(Case& c) {
    Rng rng(3);
    const unsigned n = 128;
    int* pred = c.alloc<int>(n);
    for (unsigned t = 0; t < n; ++t) {
        unsigned w = t / 32;
        pred[t] = w == 1 ? 1 + rng.range(5) : w == 2 ? 0 : rng.range(4) == 0 ? 0 : rng.range(7);  // warp 1 all, 2 none
    }
    unsigned* out = c.alloc<unsigned>(n * 8);
    SimTestParams p{};
    p.in0 = pred, p.out0 = out;
    if (!ST_RUN(c, simtest_vote, p, dim3(1, 1, 1), dim3(n, 1, 1), 0)) return;
    for (unsigned t = 0; t < n; ++t) {
        unsigned base = t - t % 32, ballot = 0, part = 0, match = 0, sum = 0;
        int mx = -(1 << 30);
        for (unsigned l = 0; l < 32; ++l) {
            int q = pred[base + l];
            ballot |= unsigned(q != 0) << l;
            if (l & 4) part |= unsigned(q != 0) << l;
            match |= unsigned((q & 3) == (pred[t] & 3)) << l;
            sum += unsigned(q);
            mx = q - 1000 > mx ? q - 1000 : mx;
        }
        unsigned want[8] = {ballot, ballot != 0, ballot == 0xffffffffu, (t & 4) ? part : 0xdeadu, match, sum,
                            unsigned(mx), 0xffffffffu};
        static const char* what[8] = {"__ballot_sync", "__any_sync", "__all_sync", "__ballot_sync(0xf0f0f0f0)",
                                      "__match_any_sync", "__reduce_add_sync", "__reduce_max_sync", "__activemask"};
        for (int k = 0; k < 8; ++k)
            if (out[t * 8 + k] != want[k])
                return c.fail("%s: lane %u got 0x%x, want 0x%x", what[k], t, out[t * 8 + k], want[k]);
    }
    c.note("ballot/any/all (random, all-true and all-false warps), a partial-mask ballot, match_any, "
           "reduce_add/max, activemask");
}

// ---- tensor cores ------------------------------------------------------------------------------
inline void case_mma(Case& c, bool f16) {
    Rng rng(f16 ? 5 : 4);
    const unsigned warps = 8;
    auto cvt = [&](uint16_t h) { return f16 ? f16_to_f32(h) : bf16_to_f32(h); };
    auto rnd = [&](float x) { return f16 ? f32_to_f16(x) : f32_to_bf16(x); };
    double worst = 0;
    for (int alias = 0; alias < 2; ++alias) {
        uint16_t* A = c.alloc<uint16_t>(warps * 256);
        uint16_t* B = c.alloc<uint16_t>(warps * 128);
        float* C = c.alloc<float>(warps * 128);
        float* D = c.alloc<float>(warps * 128);
        for (unsigned i = 0; i < warps * 256; ++i) A[i] = rnd(rng.normal() * 2.0f);
        for (unsigned i = 0; i < warps * 128; ++i) B[i] = rnd(rng.normal());
        for (unsigned i = 0; i < warps * 128; ++i) C[i] = rng.normal();
        SimTestParams p{};
        p.in0 = A, p.in1 = B, p.in2 = C, p.out0 = D, p.mode = (f16 ? 1 : 0) | (alias ? 2 : 0);
        if (!ST_RUN(c, simtest_mma, p, dim3(2, 1, 1), dim3(warps * 16, 1, 1), 0)) return;
        for (unsigned w = 0; w < warps; ++w)
            for (unsigned r = 0; r < 16; ++r)
                for (unsigned col = 0; col < 8; ++col) {
                    double acc = C[w * 128 + r * 8 + col], mag = std::fabs(acc);
                    for (unsigned k = 0; k < 16; ++k) {
                        double pr = double(cvt(A[w * 256 + r * 16 + k])) * double(cvt(B[w * 128 + k * 8 + col]));
                        acc += pr, mag += std::fabs(pr);
                    }
                    double got = D[w * 128 + r * 8 + col], err = std::fabs(got - acc) / (mag + 1e-30);
                    worst = err > worst ? err : worst;
                    if (!(err <= (ST_SHIM ? 2e-6 : 2e-5)))  // the tensor core may truncate partial sums
                        return c.fail("%s mma%s: warp %u D[%u][%u] = %.9g, want %.9g (float64 matmul)",
                                      f16 ? "f16" : "bf16", alias ? " (d aliases c)" : "", w, r, col, got, acc);
                }
    }
    c.note("%u random 16x16x8 %s tiles vs a float64 matmul (also with d aliasing c): worst error %.2e of sum|a*b|",
           2 * warps, f16 ? "f16" : "bf16", worst);
}
inline void case_mma_bf16(Case& c) { case_mma(c, false); }
inline void case_mma_f16(Case& c) { case_mma(c, true); }

inline void case_ldmatrix(Case& c) {
    Rng rng(6);
    for (int mode = 0; mode < 2; ++mode) {
        uint16_t* tile = c.alloc<uint16_t>(64 * 8);
        for (int i = 0; i < 64 * 8; ++i) tile[i] = uint16_t(rng.u32());
        int* rows = c.alloc<int>(32);
        for (int l = 0; l < 32; ++l) rows[l] = rng.range(64);  // any row, any lane: checks the lane -> row mapping
        uint32_t* out = c.alloc<uint32_t>(32 * 14);
        SimTestParams p{};
        p.in0 = tile, p.in1 = rows, p.out0 = out, p.mode = mode;
        if (!ST_RUN(c, simtest_ldmatrix, p, dim3(1, 1, 1), dim3(32, 1, 1), 64 * 16)) return;
        auto M = [&](int j, int r, int col) { return uint32_t(tile[rows[8 * j + r] * 8 + col]); };
        static const char* names[6] = {"x1", "x2", "x4", "x1.trans", "x2.trans", "x4.trans"};
        const int first[6] = {0, 1, 3, 7, 8, 10}, num[6] = {1, 2, 4, 1, 2, 4};
        for (int v = 0; v < 6; ++v)
            for (int l = 0; l < 32; ++l)
                for (int j = 0; j < num[v]; ++j) {
                    uint32_t want = v < 3 ? M(j, l / 4, 2 * (l % 4)) | M(j, l / 4, 2 * (l % 4) + 1) << 16
                                          : M(j, 2 * (l % 4), l / 4) | M(j, 2 * (l % 4) + 1, l / 4) << 16;
                    uint32_t got = out[l * 14 + first[v] + j];
                    if (got != want)
                        return c.fail("ldmatrix.%s (%s shared memory): lane %d register %d = 0x%08x, want 0x%08x",
                                      names[v], mode ? "static" : "dynamic", l, j, got, want);
                }
    }
    c.note("x1/x2/x4 with and without .trans, random row per lane, dynamic and static shared memory");
}

inline void case_attention_tile(Case& c) {
    for (int f16 = 0; f16 < 2; ++f16) {
        Rng rng(7 + f16);
        auto cvt = [&](uint16_t h) { return f16 ? f16_to_f32(h) : bf16_to_f32(h); };
        auto rnd = [&](float x) { return f16 ? f32_to_f16(x) : f32_to_bf16(x); };
        const unsigned warps = 8;
        uint16_t* Q = c.alloc<uint16_t>(warps * 256);
        uint16_t* K = c.alloc<uint16_t>(warps * 256);
        uint16_t* V = c.alloc<uint16_t>(warps * 256);
        float* O = c.alloc<float>(warps * 256);
        for (unsigned i = 0; i < warps * 256; ++i) Q[i] = rnd(rng.normal()), K[i] = rnd(rng.normal()), V[i] = rnd(rng.normal());
        SimTestParams p{};
        p.in0 = Q, p.in1 = K, p.in2 = V, p.out0 = O, p.mode = f16;
        if (!ST_RUN(c, simtest_attention_tile, p, dim3(2, 1, 1), dim3(128, 1, 1), 4 * 3 * 512)) return;
        double worst = 0;
        for (unsigned w = 0; w < warps; ++w) {
            float P[16][16];
            for (int i = 0; i < 16; ++i)
                for (int j = 0; j < 16; ++j) {
                    double s = 0;
                    for (int d = 0; d < 16; ++d) s += double(cvt(Q[w * 256 + i * 16 + d])) * double(cvt(K[w * 256 + j * 16 + d]));
                    P[i][j] = cvt(rnd(float(s)));  // P is rounded to bf16/f16 by the pack
                }
            for (int i = 0; i < 16; ++i)
                for (int d = 0; d < 16; ++d) {
                    double o = 0, mag = 0;
                    for (int j = 0; j < 16; ++j) {
                        double pr = double(P[i][j]) * double(cvt(V[w * 256 + j * 16 + d]));
                        o += pr, mag += std::fabs(pr);
                    }
                    double got = O[w * 256 + i * 16 + d], err = std::fabs(got - o) / (mag + 1e-30);
                    worst = err > worst ? err : worst;
                    // One bf16 ulp of slack on P (ties in the S rounding may break either way).
                    if (!(err <= (f16 ? 2e-3 : 1e-2)))
                        return c.fail("%s attention tile: warp %u O[%d][%d] = %.7g, want %.7g", f16 ? "f16" : "bf16", w, i,
                                      d, got, o);
                }
        }
        c.note("%s: worst error %.1e", f16 ? "f16" : "bf16", worst);
    }
    c.note("S = QK^T and O = PV per warp: cp.async, ldmatrix x4 / x4.trans, the C -> A fragment reuse");
}

// ---- cp.async, atomics -------------------------------------------------------------------------
inline void case_cp_async(Case& c) {
    Rng rng(9);
    const unsigned n = 128;
    uint32_t* in0 = c.alloc<uint32_t>(n * 4);
    uint32_t* in1 = c.alloc<uint32_t>(n * 4);
    for (unsigned i = 0; i < n * 4; ++i) in0[i] = rng.u32() | 1u, in1[i] = rng.u32() | 1u;
    uint32_t* out = c.alloc<uint32_t>(n * 8);
    SimTestParams p{};
    p.in0 = in0, p.in1 = in1, p.out0 = out;
    if (!ST_RUN(c, simtest_cp_async, p, dim3(1, 1, 1), dim3(n, 1, 1), 64 * n)) return;
    for (unsigned t = 0; t < n; ++t) {
        const uint32_t* o = out + t * 8;
        uint32_t a = in0[t * 4 + 3], b = in1[t * 4 + 3];
        if (ST_SHIM && o[0] != 0xFFFFFFFFu) return c.fail("thread %u: A visible before any wait (0x%08x)", t, o[0]);
        if (o[1] != a) return c.fail("thread %u: A after wait_group 1 = 0x%08x, want 0x%08x", t, o[1], a);
        if (ST_SHIM && o[2] != 0xFFFFFFFFu)
            return c.fail("thread %u: group 1 (B) visible after wait_group 1 (0x%08x)", t, o[2]);
        if (o[3] != b) return c.fail("thread %u: B after wait_group 0 = 0x%08x, want 0x%08x", t, o[3], b);
        uint32_t cw = t % 2 == 0 ? in0[t * 4 + 3] : 0u;
        if (o[4] != cw) return c.fail("thread %u: zero-fill copy (valid = %d) = 0x%08x, want 0x%08x", t, t % 2 == 0, o[4], cw);
        if (o[5] != in1[((t + 1) % n) * 4 + 1]) return c.fail("thread %u: copy after wait_all = 0x%08x", t, o[5]);
        if (o[6] != in0[((t + 1) % n) * 4 + 2]) return c.fail("thread %u: neighbour's copy after __syncthreads = 0x%08x", t, o[6]);
    }
    c.note(ST_SHIM ? "data visible only after the matching wait_group (1, 0, wait_all); zero-fill; across threads after a barrier"
                   : "data after wait_group (1, 0, wait_all); zero-fill; across threads after a barrier");
}

inline void case_atomics(Case& c) {
    Rng rng(10);
    const unsigned n = 128, nb = 6;
    int* in = c.alloc<int>(n * nb);
    for (unsigned i = 0; i < n * nb; ++i) in[i] = rng.range(2001) - 1000;
    unsigned* g = c.alloc<unsigned>(5 + nb, 0);
    int mx0 = -(1 << 30), mn0 = 1 << 30;
    memcpy(g + 2, &mx0, 4), memcpy(g + 3, &mn0, 4);
    float* sh = c.alloc<float>(nb * 6);
    SimTestParams p{};
    p.in0 = in, p.out0 = g, p.out1 = sh;
    if (!ST_RUN(c, simtest_atomics, p, dim3(nb, 1, 1), dim3(n, 1, 1), 0)) return;
    double sum = 0;
    int mx = mx0, mn = mn0;
    unsigned cas = 0;
    for (unsigned i = 0; i < n * nb; ++i) sum += in[i], mx = in[i] > mx ? in[i] : mx, mn = in[i] < mn ? in[i] : mn, cas += unsigned(in[i] & 0xff);
    float gs;
    memcpy(&gs, g, 4);
    int gmx, gmn;
    memcpy(&gmx, g + 2, 4), memcpy(&gmn, g + 3, 4);
    if (std::fabs(gs - sum) > 1e-3 * (std::fabs(sum) + 1)) return c.fail("global atomicAdd(float): %g, want %g", gs, sum);
    if (g[1] != n * nb) return c.fail("global atomicAdd(unsigned): %u, want %u", g[1], n * nb);
    if (gmx != mx || gmn != mn) return c.fail("global atomicMax/Min(int): %d/%d, want %d/%d", gmx, gmn, mx, mn);
    if (g[4] != cas) return c.fail("global atomicCAS loop: %u, want %u", g[4], cas);
    for (unsigned b = 0; b < nb; ++b) {
        if (g[5 + b] < 1 || g[5 + b] > n) return c.fail("global atomicExch: block %u slot = %u", b, g[5 + b]);
        double s = 0;
        int h[4] = {0, 0, 0, 0}, m = -(1 << 30);
        for (unsigned t = 0; t < n; ++t) {
            int v = in[b * n + t];
            s += v, h[v & 3]++, m = v > m ? v : m;
        }
        const float* o = sh + b * 6;
        if (std::fabs(o[0] - s) > 1e-3 * (std::fabs(s) + 1)) return c.fail("shared atomicAdd(float): block %u %g, want %g", b, o[0], s);
        for (int k = 0; k < 4; ++k)
            if (o[1 + k] != float(h[k])) return c.fail("shared atomicAdd(int) histogram: block %u bin %d = %g, want %d", b, k, o[1 + k], h[k]);
        if (o[5] != float(m)) return c.fail("shared atomicMax(int): block %u %g, want %d", b, o[5], m);
    }
    c.note("shared: atomicAdd float/int, atomicMax; global: atomicAdd float/unsigned, atomicMax/Min, atomicCAS loop, atomicExch");
}

// ---- wgmma (sm_90a) -------------------------------------------------------------------------------
// When a GPU disagrees with the emulated wgmma, which reading of shared memory does it follow? The
// kernel's shared-memory image (simtest_wgmma's writes) is rebuilt on the host and D recomputed
// under each reading of the descriptors' strides and of the N-major core matrix; the failure message
// names the one the hardware matches. Reading 0 is the emulated one (PTX ISA 9.7.15.5.1.2).
struct WgmmaReadings {
    int mode;                 // simtest_wgmma's mode 0 or 1
    unsigned n;               // N: 64 or 72
    std::vector<double> img;  // the image as values, indexed by byte offset / 2 (NaN: never written)
    const uint16_t* A;
    const float* C;
    bool f16;
    static constexpr int COUNT = 4;

    WgmmaReadings(int mode_, const uint16_t* A_, const uint16_t* B, const float* C_)
        : mode(mode_), n(mode_ == 1 ? 72 : 64), img(2304, NAN), A(A_), C(C_), f16(mode_ == 1) {
        for (unsigned m = 0; m < 64; ++m)
            for (unsigned k = 0; k < 16; ++k) img[((m / 8) * 256 + (k / 8) * 128 + (m % 8) * 16 + (k % 8) * 2) / 2] = cvt(A[m * 16 + k]);
        for (unsigned k = 0; k < 16; ++k)
            for (unsigned c = 0; c < n; ++c) {
                unsigned off = mode == 1 ? (c / 8) * 256 + (k / 8) * 128 + (k % 8) * 16 + (c % 8) * 2
                                         : (c / 8) * 256 + (k / 8) * 128 + (c % 8) * 16 + (k % 8) * 2;
                img[1024 + off / 2] = cvt(B[k * n + c]);
            }
    }
    double cvt(uint16_t h) const { return f16 ? f16_to_f32(h) : bf16_to_f32(h); }
    static const char* name(int mode, int h) {
        static const char* k_major[COUNT] = {"as emulated", "B's LBO and SBO swapped", "A's LBO and SBO swapped",
                                             "A's and B's LBO and SBO swapped"};
        static const char* n_major[COUNT] = {"as emulated", "LBO and SBO swapped",
                                             "N-major core matrix rows along N (not K)", "both"};
        return (mode == 1 ? n_major : k_major)[h];
    }
    // Element (mn, k) of an operand at `base` (elements) with strides lbo/sbo (bytes); `swap`
    // exchanges the strides, `mn_rows` makes the 16-byte core-matrix rows run along MN.
    double at(unsigned base, unsigned mn, unsigned k, unsigned lbo, unsigned sbo, bool swap, bool mn_rows) const {
        if (swap) std::swap(lbo, sbo);
        unsigned off = (mn / 8) * sbo + (k / 8) * lbo + (mn_rows ? (mn % 8) * 16 + (k % 8) * 2 : (k % 8) * 16 + (mn % 8) * 2);
        return base + off / 2 < img.size() ? img[base + off / 2] : NAN;
    }
    // D under reading h; entry r * n + col.
    std::vector<double> d(int h) const {
        std::vector<double> out(64 * n);
        for (unsigned r = 0; r < 64; ++r)
            for (unsigned col = 0; col < n; ++col) {
                double acc = C[r * n + col];
                for (unsigned k = 0; k < 16; ++k) {
                    double a = mode == 1 ? cvt(A[r * 16 + k]) : at(0, r, k, 128, 256, h >= 2, true);
                    double b = at(1024, col, k, 128, 256, h & 1, mode == 1 ? h >= 2 : true);
                    acc += a * b;
                }
                out[r * n + col] = acc;
            }
        return out;
    }
    // The reading closest to `got` and its largest error relative to max |D|.
    int closest(const float* got, double* err_out) const {
        int best = -1;
        double best_err = INFINITY;
        for (int h = 0; h < COUNT; ++h) {
            std::vector<double> want = d(h);
            double mx = 1e-30, err = 0;
            for (size_t i = 0; i < want.size(); ++i) mx = std::max(mx, std::fabs(want[i]));
            for (size_t i = 0; i < want.size(); ++i) {
                double e = std::fabs(double(got[i]) - want[i]);
                err = std::max(err, e != e ? INFINITY : e / mx);
            }
            if (err < best_err) best = h, best_err = err;
        }
        *err_out = best_err;
        return best;
    }
};

// The emulated warpgroup MMA against a float64 matmul (modes 0 and 1 of simtest_wgmma: A from
// shared memory and from registers, B K-major and N-major, bf16 and f16), then under the shim the
// planted misuses its diagnostics must name, and that the readings above are told apart.
inline void case_wgmma(Case& c) {
    Rng rng(9);
    double worst = 0;
    for (int mode = 0; mode < 2; ++mode) {
        const bool f16 = mode == 1;
        const unsigned n = f16 ? 72 : 64;
        auto cvt = [&](uint16_t h) { return f16 ? f16_to_f32(h) : bf16_to_f32(h); };
        auto rnd = [&](float x) { return f16 ? f32_to_f16(x) : f32_to_bf16(x); };
        uint16_t* A = c.alloc<uint16_t>(64 * 16);
        uint16_t* B = c.alloc<uint16_t>(16 * n);
        float* C = c.alloc<float>(64 * n);
        float* D = c.alloc<float>(64 * n);
        for (unsigned i = 0; i < 64 * 16; ++i) A[i] = rnd(rng.normal() * 2.0f);
        for (unsigned i = 0; i < 16 * n; ++i) B[i] = rnd(rng.normal());
        for (unsigned i = 0; i < 64 * n; ++i) C[i] = rng.normal();
        SimTestParams p{};
        p.in0 = A, p.in1 = B, p.in2 = C, p.out0 = D, p.mode = mode;
        if (!ST_RUN(c, simtest_wgmma, p, dim3(1, 1, 1), dim3(128, 1, 1), 4608)) return;
        const char* what = f16 ? "m64n72k16 f16, A in registers, B N-major" : "m64n64k16 bf16, A and B in shared memory";
        for (unsigned r = 0; r < 64; ++r)
            for (unsigned col = 0; col < n; ++col) {
                double acc = C[r * n + col], mag = std::fabs(acc);
                for (unsigned k = 0; k < 16; ++k) {
                    double pr = double(cvt(A[r * 16 + k])) * double(cvt(B[k * n + col]));
                    acc += pr, mag += std::fabs(pr);
                }
                double got = D[r * n + col], err = std::fabs(got - acc) / (mag + 1e-30);
                worst = err > worst ? err : worst;
                if (!(err <= (ST_SHIM ? 2e-6 : 2e-5))) {
                    double e;
                    int h = WgmmaReadings(mode, A, B, C).closest(D, &e);
                    return c.fail("wgmma %s: D[%u][%u] = %.9g, want %.9g (float64 matmul); of the shared-memory readings "
                                  "tried, the result is closest to \"%s\" (max error %.2e of max |D|)",
                                  what, r, col, got, acc, h < 0 ? "none" : WgmmaReadings::name(mode, h), e);
                }
            }
        if (ST_SHIM) {  // the readings are told apart: each one's D is identified as itself
            WgmmaReadings rd(mode, A, B, C);
            for (int h = 0; h < WgmmaReadings::COUNT; ++h) {
                std::vector<double> dh = rd.d(h);
                std::vector<float> df(dh.begin(), dh.end());
                double e;
                int got = rd.closest(df.data(), &e);
                if (got != h) return c.fail("wgmma readings: mode %d reading %d identified as %d", mode, h, got);
            }
        }
    }
    c.note("m64n64k16 bf16 (A, B from shared memory, K-major) and m64n72k16 f16 (A in registers, B N-major) vs a "
           "float64 matmul: worst error %.2e of sum|a*b|%s", worst,
           ST_SHIM ? "; the alternative shared-memory readings a GPU failure is matched against are told apart" : "");
    if (!ST_SHIM || (getenv("DELTADIT_SIM_ABORT") && strcmp(getenv("DELTADIT_SIM_ABORT"), "0"))) return;
    const struct {
        int mode;
        unsigned threads;
        const char* want;
    } plants[] = {
        {2, 128, "without a wgmma.fence"},
        {3, 128, "not completed by a wgmma.wait_group"},
        {4, 128, "swizzle mode 1"},
        {5, 128, "A fragment registers changed"},
        {0, 96, "whole warpgroups"},
    };
    for (const auto& pl : plants) {
        SimTestParams p{};
        p.in0 = c.alloc<uint16_t>(64 * 16, 0), p.in1 = c.alloc<uint16_t>(16 * 72, 0), p.in2 = c.alloc<float>(64 * 72, 0);
        p.out0 = c.alloc<float>(64 * 72), p.mode = pl.mode;
        if (ST_LAUNCH(c, simtest_wgmma, p, dim3(1, 1, 1), dim3(pl.threads, 1, 1), 4608) == 0)
            return c.fail("planted wgmma bug (mode %d, %u threads) was not reported", pl.mode, pl.threads);
        if (c.last_error.find(pl.want) == std::string::npos)
            return c.fail("planted wgmma bug (mode %d): message lacks \"%s\": %s", pl.mode, pl.want, c.last_error.c_str());
    }
    c.note("missing fence, exit before the wait, swizzled descriptor, A registers changed in flight and a partial "
           "warpgroup are reported");
}

}  // namespace simtest
