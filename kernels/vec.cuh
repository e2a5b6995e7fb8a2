// 16-byte vector access for the memory-bound kernels: E consecutive elements of a bf16/f16 row as
// one uint4 (E = 8) or one element (E = 1, the scalar path for rows that are not a multiple of 8),
// converted to and from f32 in registers.
#pragma once

template <typename T, int E> struct Chunk;

template <typename T> struct Chunk<T, 8> {
    uint4 raw;
    __device__ __forceinline__ void load(const T* p) { raw = *reinterpret_cast<const uint4*>(p); }
    __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<uint4*>(p) = raw; }
    __device__ __forceinline__ void unpack(float (&f)[8]) const {
        const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            T lo, hi;  // bit copies of the two halves of a word: no conversion until to_f32
            memcpy(&lo, reinterpret_cast<const char*>(&w[i]), sizeof(T));
            memcpy(&hi, reinterpret_cast<const char*>(&w[i]) + sizeof(T), sizeof(T));
            f[2 * i] = to_f32(lo);
            f[2 * i + 1] = to_f32(hi);
        }
    }
    __device__ __forceinline__ void pack(const float (&f)[8]) {
        uint32_t w[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const T lo = from_f32<T>(f[2 * i]), hi = from_f32<T>(f[2 * i + 1]);
            memcpy(reinterpret_cast<char*>(&w[i]), &lo, sizeof(T));
            memcpy(reinterpret_cast<char*>(&w[i]) + sizeof(T), &hi, sizeof(T));
        }
        raw = make_uint4(w[0], w[1], w[2], w[3]);
    }
    // Round 8 floats to T and store them as one vector.
    __device__ __forceinline__ static void write(T* p, const float (&f)[8]) {
        Chunk c;
        c.pack(f);
        c.store(p);
    }
};

template <typename T> struct Chunk<T, 1> {
    T raw;
    __device__ __forceinline__ void load(const T* p) { raw = *p; }
    __device__ __forceinline__ void store(T* p) const { *p = raw; }
    __device__ __forceinline__ void unpack(float (&f)[1]) const { f[0] = to_f32(raw); }
    __device__ __forceinline__ void pack(const float (&f)[1]) { raw = from_f32<T>(f[0]); }
    __device__ __forceinline__ static void write(T* p, const float (&f)[1]) { *p = from_f32<T>(f[0]); }
};
