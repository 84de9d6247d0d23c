//! The paper's multi-scale synthetic datasets, rendered in Rust from a seed.
//!
//! A 32×32 black image holds a 4×4 grid of 8×8 tiles, each a filled ellipse
//! (bounding box x 1–7, y 3–5) rotated about the tile centre and pasted at the
//! grid position jittered by ±1 pixel. MSDS1: one base colour per image (each
//! channel 32–223) jittered ±32 per ellipse, independent random angles in
//! [0°, 180°). MSDS2: one base angle per image plus up to 45° per ellipse,
//! independent random colours. As the authors' `generate_msds{1,2}.py`, with
//! analytic anti-aliasing (4×4 supersampling) in place of PIL's bicubic rotate.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Dataset, Item, SourceSpec};

/// Which dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Shared colour, random angles.
    Msds1,
    /// Shared angle, random colours.
    Msds2,
}

/// One ellipse's label, as the authors store it: `(x, y, angle°, r, g, b)`.
pub type Label = [f32; 6];

/// Pseudo-random but stable stream per `(seed, split, index)`.
fn image_rng(seed: u64, split: u64, index: u64) -> StdRng {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(split + 1);
    h ^= index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(h ^ (h >> 29))
}

/// Renders image `index` of a split: `[32, 32, 3]` bytes and the 16 labels
/// (row-major over the 4×4 grid, `i` the x-, `j` the y-position as in the authors' code).
pub fn render(variant: Variant, seed: u64, split: u64, index: u64) -> (Vec<u8>, Vec<Label>) {
    let mut rng = image_rng(seed, split, index);
    let mut img = vec![0f32; 32 * 32 * 3];
    let mut labels = Vec::with_capacity(16);
    let base_colour: [i32; 3] = std::array::from_fn(|_| rng.random_range(0..=191) + 32);
    let base_angle: f64 = rng.random::<f64>() * 180.0;
    for i in 0..4 {
        for j in 0..4 {
            let (colour, angle) = match variant {
                Variant::Msds1 => {
                    let c: [i32; 3] = std::array::from_fn(|k| base_colour[k] + rng.random_range(-32..=32));
                    (c, rng.random::<f64>() * 180.0)
                }
                Variant::Msds2 => {
                    let c: [i32; 3] = std::array::from_fn(|_| rng.random_range(0..=255));
                    (c, base_angle + rng.random::<f64>() * 45.0)
                }
            };
            let x0 = i * 8 + rng.random_range(-1..=1);
            let y0 = j * 8 + rng.random_range(-1..=1);
            paste_ellipse(&mut img, x0, y0, angle, colour);
            labels.push([x0 as f32, y0 as f32, angle as f32, colour[0] as f32, colour[1] as f32, colour[2] as f32]);
        }
    }
    (img.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect(), labels)
}

/// Composites one rotated ellipse tile with its top-left corner at `(x0, y0)`.
fn paste_ellipse(img: &mut [f32], x0: i32, y0: i32, angle_deg: f64, colour: [i32; 3]) {
    const SUB: usize = 4;
    // PIL rotates counter-clockwise about the tile centre (4, 4).
    let (sin, cos) = angle_deg.to_radians().sin_cos();
    for ty in 0..8 {
        for tx in 0..8 {
            let (x, y) = (x0 + tx, y0 + ty);
            if !(0..32).contains(&x) || !(0..32).contains(&y) {
                continue;
            }
            let mut covered = 0;
            for sy in 0..SUB {
                for sx in 0..SUB {
                    let px = tx as f64 + (sx as f64 + 0.5) / SUB as f64 - 4.0;
                    let py = ty as f64 + (sy as f64 + 0.5) / SUB as f64 - 4.0;
                    // Undo the rotation (y points down, so CCW on screen is this sign).
                    let u = cos * px - sin * py + 4.0;
                    let v = sin * px + cos * py + 4.0;
                    let (du, dv) = ((u - 4.5) / 3.5, (v - 4.5) / 1.5);
                    if du * du + dv * dv <= 1.0 {
                        covered += 1;
                    }
                }
            }
            let alpha = covered as f32 / (SUB * SUB) as f32;
            let p = (y as usize * 32 + x as usize) * 3;
            for c in 0..3 {
                img[p + c] = alpha * colour[c].clamp(0, 255) as f32 + (1.0 - alpha) * img[p + c];
            }
        }
    }
}

pub fn open(spec: &mut SourceSpec, variant: Variant) -> anyhow::Result<Dataset> {
    let train: usize = spec.take("train")?.unwrap_or(90_000);
    let test: usize = spec.take("test")?.unwrap_or(10_000);
    let seed: u64 = spec.take("seed")?.unwrap_or(0);
    let items = |split: u64, n: usize| -> Vec<Item> {
        (0..n as u64).map(|index| Item::Synthetic { variant, seed, split, index }).collect()
    };
    let description = format!("{variant:?} seed {seed}: {train} train / {test} test (generated)");
    Ok(Dataset { train: items(0, train), test: items(1, test), descriptions: vec![description] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_is_seeded_and_variant_specific() {
        let (a, la) = render(Variant::Msds1, 3, 0, 5);
        let (b, _) = render(Variant::Msds1, 3, 0, 5);
        let (c, _) = render(Variant::Msds1, 3, 0, 6);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(la.len(), 16);
        // Ellipses cover some pixels, the background stays black somewhere.
        assert!(a.iter().any(|&v| v > 100) && a.chunks(3).any(|p| p == [0, 0, 0]));
        // MSDS1: colours near one base; MSDS2: angles within 45° of one base.
        let spread = |labels: &[Label], k: usize| {
            let v: Vec<f32> = labels.iter().map(|l| l[k]).collect();
            v.iter().cloned().fold(f32::MIN, f32::max) - v.iter().cloned().fold(f32::MAX, f32::min)
        };
        assert!(spread(&la, 3) <= 64.0);
        let (_, l2) = render(Variant::Msds2, 3, 0, 5);
        assert!(spread(&l2, 2) <= 45.0);
    }
}
