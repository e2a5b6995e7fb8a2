// The attention kernels, one table: the single source of their entry points and shim registration
// (attention.cu, attention_sm90a.cu expand the rows below) and, through build.rs, which reads this
// file, of the Rust side: the `AttentionKernel` choices and each variant's launch geometry
// (src/backend/kernels/attention.rs). A variant is added by adding a row here and its tile type.
//
// The kernels a backend can choose between where a head dim has more than one variant (the first
// is the default):
//   DELTADIT_ATTENTION_KIND(Rust variant, name, doc)
#define DELTADIT_ATTENTION_KINDS(KIND)                                                                          \
    KIND(Mma, "mma", "kernels/attention.cu: mma.sync tensor cores (sm_80 and newer), every head dim; the default.") \
    KIND(Wgmma, "wgmma", "kernels/attention_sm90a.cu: Hopper warpgroup MMA, Q·Kᵀ with both operands from shared memory, 2 warpgroups, 2 CTAs an SM (head dim 72, compute capability 9.0).") \
    KIND(WgmmaQRegs, "wgmma-qregs", "As `Wgmma` with Q's fragments in registers (half the shared-memory reads of Q·Kᵀ), 2 warpgroups, 1 CTA an SM.") \
    KIND(WgmmaQRegs3, "wgmma-qregs3", "Q in registers, 3 warpgroups (192 queries a CTA), 1 CTA an SM.")

// The entry points, one row per (kind, head dim); a row is two kernels, <stem>_bf16 and <stem>_f16,
// in the file its table names. The geometry columns are checked against the tile type at compile
// time (static_assert in the .cu files), so the Rust launcher and the kernel cannot disagree.
//   X(kind, stem, head dim, tile type, threads, queries a CTA, dynamic shared memory bytes)
// Shared memory of the mma tiles: 2 bytes * (BLOCK_Q + 4 * BLOCK_K) rows * pitch + 2 * BLOCK_K
// floats of key bias, pitch = round_up(d, 16) + 8 elements; of the wgmma tiles: 2 bytes *
// (BLOCK_Q + 5 * 64) rows * 80 elements + 8 * 64. Above 48 KB the CUDA backend raises the
// function's MAX_DYNAMIC_SHARED_SIZE_BYTES when it loads the module.
#define DELTADIT_ATTENTION_MMA(X)                                          /* kernels/attention.cu */      \
    X(Mma, attention_d64, 64, attention::TileD64, 128, 128, 55808)                                         \
    X(Mma, attention_d72, 72, attention::TileD72, 128, 128, 45312)                                         \
    X(Mma, attention_d128, 128, attention::TileD128, 128, 128, 69888)
#define DELTADIT_ATTENTION_SM90A(X)                                        /* kernels/attention_sm90a.cu */ \
    X(Wgmma, attention_wgmma_d72, 72, attention_sm90a::TileSmemQ, 256, 128, 72192)                         \
    X(WgmmaQRegs, attention_wgmma_qregs_d72, 72, attention_sm90a::TileQRegs, 256, 128, 72192)              \
    X(WgmmaQRegs3, attention_wgmma_qregs3_d72, 72, attention_sm90a::TileQRegs3, 384, 192, 82432)

// The two entry points of a row, defined with the tile's launch bounds, and its geometry checked.
#define DELTADIT_ATTENTION_ENTRY(run, kind, stem, d, Tile, threads, block_q, smem)                    \
    static_assert(Tile::D == d && Tile::THREADS == threads && Tile::BLOCK_Q == block_q && Tile::SMEM == smem, \
                  "attention_variants.h: the row of " #stem " disagrees with its tile");                  \
    extern "C" __global__ void __launch_bounds__(Tile::THREADS, Tile::MIN_BLOCKS) stem##_bf16(AttentionParams p) { \
        run<bf16, Tile>(p);                                                                           \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(Tile::THREADS, Tile::MIN_BLOCKS) stem##_f16(AttentionParams p) { \
        run<f16, Tile>(p);                                                                            \
    }
// A row's two kernels in the file's shim registration block.
#define DELTADIT_ATTENTION_SIM_KERNELS(kind, stem, ...) \
    DELTADIT_SIM_KERNEL(stem##_bf16, AttentionParams)   \
    DELTADIT_SIM_KERNEL(stem##_f16, AttentionParams)
