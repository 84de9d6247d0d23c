//! Inpainting: fill the unknown pixels of an image — the *hole* — while the
//! known pixels stay exactly as given.
//!
//! Two methods, both confined to the hole's causal cone (the blocks whose
//! output depends on a hole pixel, `O(log L)` of them for a brush stroke):
//!
//! - [`ConeSampler`] draws completions from the model: it redraws the cone's
//!   latents with a prior-preserving move, decodes only the hole, puts the
//!   known pixels back and re-encodes, a few times, so the cone's latents come
//!   to agree with the known pixels (the RePaint idea carried over to a flow).
//!   No gradients; `K` completions at once, seeded, a temperature per level.
//! - `Inpainter` finds the mode: Adam on `log p(x)` over the hole's pixels
//!   (with the `autodiff` feature: it differentiates through the flow). A
//!   flow's density prefers smooth images, so this fill is nearly flat.

#[cfg(feature = "autodiff")]
mod map;
mod sample;

#[cfg(feature = "autodiff")]
pub use map::{InpaintOptions, InpaintResult, Inpainter, inpaint};
pub use sample::{ConeSampler, SampleOptions};

use crate::error::{Error, Result};
use crate::flow::{Direction, RgFlow};

/// The harmonic fill of the sites marked in `unknown` (`[L²]`) of `x: [C, L, L]`:
/// every hole pixel the mean of its in-image 4-neighbours (Laplace's equation
/// with the known pixels as boundary), solved by over-relaxed Gauss–Seidel.
/// The classical smooth fill, and the sampler's start.
pub fn harmonic_fill(x: &[f32], unknown: &[bool], l: usize) -> Vec<f32> {
    let plane = l * l;
    let mut out: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    for c in 0..x.len() / plane {
        // Start from the known pixels' mean colour.
        let known: Vec<f64> = (0..plane).filter(|s| !unknown[*s]).map(|s| out[c * plane + s]).collect();
        let mean = if known.is_empty() { 0.5 } else { known.iter().sum::<f64>() / known.len() as f64 };
        (0..plane).filter(|s| unknown[*s]).for_each(|s| out[c * plane + s] = mean);
    }
    let hole: Vec<usize> = (0..plane).filter(|s| unknown[*s]).collect();
    let omega = 1.85;
    for c in 0..x.len() / plane {
        let u = &mut out[c * plane..(c + 1) * plane];
        for _ in 0..10_000 {
            let mut change = 0f64;
            for &s in &hole {
                let (r, col) = (s / l, s % l);
                let mut sum = 0.0;
                let mut n = 0.0;
                for (dr, dc) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)] {
                    let (rr, cc) = (r as i64 + dr, col as i64 + dc);
                    if (0..l as i64).contains(&rr) && (0..l as i64).contains(&cc) {
                        sum += u[rr as usize * l + cc as usize];
                        n += 1.0;
                    }
                }
                let new = u[s] + omega * (sum / n - u[s]);
                change = change.max((new - u[s]).abs());
                u[s] = new;
            }
            if change < 1e-7 {
                break;
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// The pixels to fill, checked against a model, with their causal cone.
#[derive(Debug, Clone)]
pub struct Hole {
    unknown: Vec<bool>,
    elements: Vec<usize>,
    cone_blocks: Vec<Vec<usize>>,
    cone_sites: Vec<bool>,
}

impl Hole {
    /// The sites marked in `unknown` (`[L²]`, row-major; all channels of a
    /// marked site are unknown). At least one site must be marked.
    pub fn new(flow: &RgFlow, unknown: &[bool]) -> Result<Self> {
        let c = flow.config();
        let plane = c.image_size * c.image_size;
        if unknown.len() != plane {
            return Err(Error::Shape(format!(
                "the hole's mask has {} entries, the model's images {}×{} = {plane} sites",
                unknown.len(),
                c.image_size,
                c.image_size
            )));
        }
        if !unknown.contains(&true) {
            return Err(Error::Shape("the mask marks no unknown pixel".into()));
        }
        let elements =
            (0..c.channels).flat_map(|ch| (0..plane).filter(|s| unknown[*s]).map(move |s| ch * plane + s)).collect();
        // The blocks whose forward output depends on a hole pixel are exactly
        // the blocks the hole pixels depend on in the inverse pass (every
        // block's Jacobian is dense, so both are the same chains of blocks).
        let (cone_blocks, cone_sites) = flow.lattice().cone(unknown, Direction::Forward);
        Ok(Self { unknown: unknown.to_vec(), elements, cone_blocks, cone_sites })
    }

    /// The unknown sites, `[L²]`.
    pub fn unknown(&self) -> &[bool] {
        &self.unknown
    }

    /// Canonical element indices `c·L² + site` of the unknown pixels, channel-major.
    pub fn elements(&self) -> &[usize] {
        &self.elements
    }

    /// For every sub-layer, the blocks in the hole's causal cone.
    pub fn cone_blocks(&self) -> &[Vec<usize>] {
        &self.cone_blocks
    }

    /// The latent sites the hole's pixels depend on, `[L²]`.
    pub fn cone_sites(&self) -> &[bool] {
        &self.cone_sites
    }

    /// Blocks in the cone, all sub-layers together.
    pub fn cone_block_count(&self) -> usize {
        self.cone_blocks.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmonic_fill_reproduces_a_linear_ramp() {
        // A linear ramp is harmonic: the fill must recover it inside the hole.
        let l = 12;
        let x: Vec<f32> = (0..l * l).map(|s| 0.1 + 0.05 * (s % l) as f32 + 0.02 * (s / l) as f32).collect();
        let unknown: Vec<bool> = (0..l * l).map(|s| (3..9).contains(&(s / l)) && (4..10).contains(&(s % l))).collect();
        let mut holed = x.clone();
        (0..l * l).filter(|s| unknown[*s]).for_each(|s| holed[s] = 0.0);
        let filled = harmonic_fill(&holed, &unknown, l);
        for s in 0..l * l {
            assert!((filled[s] - x[s]).abs() < 1e-4, "site {s}: {} vs {}", filled[s], x[s]);
        }
    }
}
