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
    /// A square of side `side` (a fraction of the width; above 1 it is larger
    /// than the image) centred `(dx, dy)` widths right of and below the
    /// image's centre. Parts outside the image repeat its edge pixels. It
    /// re-frames crops tighter than CelebA's (UTKFace) to CelebA's framing.
    Window { side: f64, dx: f64, dy: f64 },
}

impl Crop {
    /// The crop box `(x, y, w, h)` in an image of `width×height`; it may
    /// reach outside the image only for [`Crop::Window`]. Offsets are rounded
    /// down (the half-size CelebA copy has offsets 7.5 and 17.5).
    pub fn rect(&self, width: u32, height: u32) -> (i64, i64, u32, u32) {
        let side = match *self {
            Crop::None => return (0, 0, width, height),
            Crop::CenterSquare => width.min(height),
            Crop::CenterFractionOfWidth(f) => ((width as f64 * f).round() as u32).clamp(1, width.min(height)),
            Crop::Window { side, dx, dy } => {
                let w = width as f64;
                let s = (w * side).round().max(1.0);
                let x = (w / 2.0 + dx * w - s / 2.0).floor() as i64;
                let y = (height as f64 / 2.0 + dy * w - s / 2.0).floor() as i64;
                return (x, y, s as u32, s as u32);
            }
        };
        (((width - side) / 2) as i64, ((height - side) / 2) as i64, side, side)
    }
}

/// The `w×h` part of `img` at `(x, y)`, where parts outside the image repeat
/// its nearest edge pixel.
fn crop_clamped(img: &DynamicImage, x: i64, y: i64, w: u32, h: u32) -> DynamicImage {
    let inside = x >= 0 && y >= 0 && x + w as i64 <= img.width() as i64 && y + h as i64 <= img.height() as i64;
    if inside {
        return img.crop_imm(x as u32, y as u32, w, h);
    }
    let rgba = img.to_rgba8();
    let clamp = |v: i64, n: u32| v.clamp(0, n as i64 - 1) as u32;
    let out = image::RgbaImage::from_fn(w, h, |i, j| {
        *rgba.get_pixel(clamp(x + i as i64, img.width()), clamp(y + j as i64, img.height()))
    });
    DynamicImage::ImageRgba8(out)
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
    let cropped = crop_clamped(img, x, y, w, h);
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

/// The largest image [`decode_and_prepare`] decodes: 8192 pixels on a side
/// and 256 MiB of decoded pixels, so a crafted header cannot make it allocate
/// without bound.
pub const MAX_IMAGE_SIDE: u32 = 8192;
const MAX_DECODED_BYTES: u64 = 256 << 20;

/// Decodes an encoded image (PNG or JPEG) and [`prepare`]s it.
pub fn decode_and_prepare(bytes: &[u8], crop: Crop, size: usize, channels: usize) -> Result<Vec<u8>> {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(e.to_string()))?;
    reader.limits(limits);
    let img = reader.decode().map_err(|e| Error::Image(e.to_string()))?;
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
    values.iter().map(|&v| crate::preprocess::to_level(v) as u8).collect()
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
    let mut out =
        RgbImage::from_pixel(cols as u32 * (tw + pad) + pad, rows as u32 * (th + pad) + pad, image::Rgb(background));
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
    fn windows_past_the_edge_repeat_edge_pixels() {
        let crop = Crop::Window { side: 1.5, dx: 0.0, dy: -0.25 };
        assert_eq!(crop.rect(200, 200), (-50, -100, 300, 300));
        // Left half black, right half white; a window twice as wide keeps the
        // halves and fills the outside with their edge colours.
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(4, 4, |x, _| image::Rgb([if x < 2 { 0 } else { 255 }; 3])));
        let wide = prepare(&img, Crop::Window { side: 2.0, dx: 0.0, dy: 0.0 }, 8, 1).unwrap();
        for row in wide.chunks(8) {
            assert_eq!(row, &[0, 0, 0, 0, 255, 255, 255, 255]);
        }
        let inside = prepare(&img, Crop::Window { side: 0.5, dx: 0.25, dy: 0.0 }, 2, 1).unwrap();
        assert_eq!(inside, vec![255; 4]);
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
    fn images_larger_than_the_limits_are_refused_before_decoding() {
        // A PNG header claiming 100000 × 100000 pixels (its data never follows).
        let mut png = Vec::new();
        RgbImage::new(1, 1).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        // The IHDR chunk's CRC-32 (over its type and data), so only the size is wrong.
        let crc = !png[12..29].iter().fold(!0u32, |mut c, &b| {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            }
            c
        });
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_and_prepare(&png, Crop::None, 8, 3).unwrap_err().to_string();
        assert!(err.to_lowercase().contains("limit") || err.contains("too large"), "{err}");
    }

    #[test]
    fn garbage_bytes_are_an_error() {
        let err = decode_and_prepare(b"definitely not a jpeg", Crop::None, 8, 3).unwrap_err();
        assert!(matches!(err, Error::Image(_)), "{err}");
    }
}
