//! candle model definitions. Each file: a serde `Config`, `new(vb, &cfg)` mirroring the
//! checkpoint's tensor names, and a forward. No I/O.

pub mod clip;
mod kernels;
pub(crate) mod packed;
pub mod qwen2_vl;
