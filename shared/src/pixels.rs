//! Images in and out of the model: cropping and resizing decoded images to
//! the model's `L×L`, and turning model output back into 8-bit pixels. Shared
//! by the trainer's data loaders and the browser demo's photo upload.

use image::imageops::{self, FilterType};
use image::{DynamicImage, RgbImage};

use crate::error::{Error, Result};

/// How to cut the square that is resized to `L×L`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crop {
    /// The largest centred square.
    CenterSquare,
    /// A centred square whose side is this fraction of the *width* (CelebA's
    /// 148 of 178 is `148/178`, applied in proportion to smaller copies).
    CenterFractionOfWidth(f64),
    /// The whole image, squashed to a square if it is not one.
    None,
}

impl Crop {
    /// The crop box `(x, y, w, h)` in an image of `width×height`. Offsets are
    /// rounded down (the half-size CelebA copy has offsets 7.5 and 17.5).
    pub fn rect(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let side = match *self {
            Crop::None => return (0, 0, width, height),
            Crop::CenterSquare => width.min(height),
            Crop::CenterFractionOfWidth(f) => ((width as f64 * f).round() as u32).clamp(1, width.min(height)),
        };
        ((width - side) / 2, (height - side) / 2, side, side)
    }
}

/// Crops, resizes (area-averaging triangle filter, like PIL's antialiased
/// bilinear) and converts to `channels` (1 = luma, 3 = RGB).
///
/// Returns `C·L·L` bytes in `[C, L, L]` order.
pub fn prepare(img: &DynamicImage, crop: Crop, size: usize, channels: usize) -> Result<Vec<u8>> {
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::Shape("empty image".into()));
    }
    let (x, y, w, h) = crop.rect(img.width(), img.height());
    let cropped = img.crop_imm(x, y, w, h);
    let resized = cropped.resize_exact(size as u32, size as u32, FilterType::Triangle);
    let plane = size * size;
    match channels {
        1 => Ok(resized.to_luma8().into_raw()),
        3 => {
            let rgb = resized.to_rgb8().into_raw();
            let mut chw = vec![0u8; 3 * plane];
            for (p, px) in rgb.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    chw[c * plane + p] = px[c];
                }
            }
            Ok(chw)
        }
        n => Err(Error::Shape(format!("images have 1 or 3 channels, not {n}"))),
    }
}

/// Decodes an encoded image (PNG or JPEG) and [`prepare`]s it.
pub fn decode_and_prepare(bytes: &[u8], crop: Crop, size: usize, channels: usize) -> Result<Vec<u8>> {
    let img = image::load_from_memory(bytes).map_err(|e| Error::Image(e.to_string()))?;
    prepare(&img, crop, size, channels)
}

/// Mirrors a `[C, L, L]` image left to right, in place.
pub fn flip_horizontal(chw: &mut [u8], size: usize) {
    for row in chw.chunks_exact_mut(size) {
        row.reverse();
    }
}

/// `[C, L, L]` values in `[0, 1]` to bytes, rounding and clamping.
pub fn unit_to_u8(values: &[f32]) -> Vec<u8> {
    values.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
}

/// `[C, L, L]` bytes (C = 1 or 3) to an RGB image (gray is repeated).
pub fn chw_to_rgb(chw: &[u8], channels: usize, size: usize) -> RgbImage {
    let plane = size * size;
    RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let p = y as usize * size + x as usize;
        let get = |c: usize| chw[if channels == 1 { p } else { c * plane + p }];
        image::Rgb([get(0), get(1), get(2)])
    })
}

/// Tiles equally sized RGB images into a grid with `cols` columns and a
/// `pad`-pixel border of `background`, scaling each tile up by `zoom`
/// (nearest neighbour, so pixels stay visible).
pub fn grid(tiles: &[RgbImage], cols: usize, zoom: u32, pad: u32, background: [u8; 3]) -> RgbImage {
    let cols = cols.max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let (tw, th) = tiles.first().map_or((1, 1), |t| (t.width() * zoom, t.height() * zoom));
    let mut out = RgbImage::from_pixel(
        cols as u32 * (tw + pad) + pad,
        rows as u32 * (th + pad) + pad,
        image::Rgb(background),
    );
    for (i, tile) in tiles.iter().enumerate() {
        let tile = imageops::resize(tile, tw, th, FilterType::Nearest);
        let (x, y) = ((i % cols) as u32 * (tw + pad) + pad, (i / cols) as u32 * (th + pad) + pad);
        imageops::replace(&mut out, &tile, x as i64, y as i64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celeba_crop_scales_with_the_image() {
        let crop = Crop::CenterFractionOfWidth(148.0 / 178.0);
        assert_eq!(crop.rect(178, 218), (15, 35, 148, 148));
        assert_eq!(crop.rect(89, 109), (7, 17, 74, 74));
    }

    #[test]
    fn prepare_gives_planar_channels() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(10, 20, image::Rgb([10, 20, 30])));
        let chw = prepare(&img, Crop::CenterSquare, 4, 3).unwrap();
        assert_eq!(chw.len(), 48);
        assert!(chw[..16].iter().all(|&v| v == 10) && chw[32..].iter().all(|&v| v == 30));
        let mut flipped = (0u8..16).collect::<Vec<_>>();
        flip_horizontal(&mut flipped, 4);
        assert_eq!(&flipped[..4], &[3, 2, 1, 0]);
    }

    #[test]
    fn garbage_bytes_are_an_error() {
        let err = decode_and_prepare(b"definitely not a jpeg", Crop::None, 8, 3).unwrap_err();
        assert!(matches!(err, Error::Image(_)), "{err}");
    }
}
