//! The scale-aware operations RG-Flow is for, shared by the trainer's
//! subcommands and the browser demo: latents by level, mixing across scales,
//! latent factors and walks, receptive fields, and local inpainting.

pub mod factors;
pub mod inpaint;
pub mod levels;
pub mod receptive;

pub use factors::{LatentSite, random_walk, vary_latent};
pub use inpaint::{ConeSampler, Hole, SampleOptions};
#[cfg(feature = "autodiff")]
pub use inpaint::{InpaintOptions, InpaintResult, Inpainter, inpaint};
pub use levels::{level_values, mix_levels, with_level_values};
pub use receptive::{receptive_field, receptive_field_tensor};
