//! # rgflow — RG-Flow in Rust
//!
//! RG-Flow (Hu, Wu, You, Olshausen, Chen, arXiv 2010.00029) is a bijective map
//! `x ↔ z` shaped like a renormalization-group / MERA network. At level `i`
//! (dilation `2^i`) a *decimator* (blocks at offset 0) and a *disentangler*
//! (blocks offset by half a block) each transform the 4×4 blocks of the sites
//! that survive to that level with a RealNVP coupling stack. Sites that do not
//! survive to level `i + 1` are the latents of level `i`, so the latent `z`
//! lives on a hyperbolic tree: fine detail at level 0, global structure at the
//! top.
//!
//! This crate holds everything that is the model — config, lattice, layers,
//! flow, prior, data transform, weight files — as backend-generic burn code, so
//! the native trainer and the browser demo run one implementation.
//!
//! ```no_run
//! use burn::prelude::*;
//! use rgflow::{RgFlowConfig, PriorKind};
//!
//! let device = Device::flex();
//! let config = RgFlowConfig::from_level_specs(32, 3, "4,3,2,1", "2", "2", "128").unwrap();
//! let flow = config.init(&device);
//! let x01 = Tensor::<4>::zeros([2, 3, 32, 32], &device).add_scalar(0.5);
//! let (x, ldj_logit) = rgflow::preprocess::logit_transform(x01, 0.9);
//! let (z, ldj) = flow.forward(x);
//! let (x_back, _) = flow.inverse(z);
//! ```

pub mod cone;
pub mod config;
pub mod coupling;
pub mod decoder;
pub mod dispatch;
pub mod error;
pub mod explore;
pub mod flow;
mod gather;
pub mod import;
pub mod kernels;
pub mod lattice;
pub mod nn;
pub mod pixels;
pub mod preprocess;
pub mod prior;
pub mod sampling;
pub mod testing;
pub mod weights;

pub use cone::PackedFlow;
pub use config::{PriorKind, RgFlowConfig};
#[cfg(feature = "wgpu")]
pub use decoder::GpuDecoder;
pub use decoder::{CpuDecoder, Decoder, host_memory};
pub use error::{Error, Result};
pub use flow::{Direction, RgFlow};
pub use lattice::{MeraLattice, SubLayerKind};
pub use prior::Prior;
pub use sampling::LevelTemperatures;
