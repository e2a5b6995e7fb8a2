//! The CUDA backend (cudarc + cuBLASLt).
