//! deltadit: Δ-DiT block caching on a minimal DiT/PixArt inference runtime.
pub mod backend;
pub mod dtype;
pub mod error;
pub mod rng;
pub mod tensor;

pub use backend::Backend;
pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::Tensor;
pub mod bench;
pub mod cache;
pub mod device;
pub mod io;
pub mod model;
pub mod pipeline;
pub mod sampler;
