//! The model crate on its own: load the shipped face model, draw faces at a
//! temperature per level, score them, and write them as a PNG grid.
//!
//! ```sh
//! cargo run -p rgflow --example faces -- [weights.rgflow] [faces.png]
//! ```

use std::path::PathBuf;

use burn::prelude::*;
use rgflow::decoder::ProductPrecision;
use rgflow::{Decoder, LevelTemperatures, pixels, preprocess};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let weights = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/celeba32.rgflow"));
    let out = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("faces.png"));

    let device = Device::flex();
    let flow = rgflow::weights::load(&weights, &device)?;
    let config = flow.config();

    // Colder fine levels, warmer coarse ones (the paper's effective
    // temperature): 0.6 at level 0 rising linearly to 0.9 at the top.
    let temperatures = LevelTemperatures::parse("0.6..0.9", config.levels())?;
    let z = flow.sample_latents(16, &temperatures, 42, &device)?; // [16, C, L, L]
    // The packed CPU decoder here (burn ops or the GPU decoder elsewhere).
    let faces = Decoder::for_device(&flow, &device, ProductPrecision::F32)?.decode(z); // [16, C, L, L] in [0, 1]

    // Their bits per dimension as 8-bit images, each level at its bin's centre.
    let values = faces.into_data().try_to_vec::<f32>()?;
    let centred = preprocess::bin_centres(&values);
    let shape = [16, config.channels, config.image_size, config.image_size];
    let bpd = flow.bits_per_dim(Tensor::from_data(TensorData::new(centred, shape), &device));
    let bpd = bpd.into_data().try_to_vec::<f32>()?;
    println!("bits/dim of the 16 faces: {:.3} (mean)", bpd.iter().sum::<f32>() / bpd.len() as f32);

    let per_face = config.channels * config.image_size * config.image_size;
    let tiles: Vec<_> = values
        .chunks(per_face)
        .map(|face| pixels::chw_to_rgb(&pixels::unit_to_u8(face), config.channels, config.image_size))
        .collect();
    pixels::grid(&tiles, 4, 4, 2, [255, 255, 255]).save(&out)?;
    println!("wrote {}", out.display());
    Ok(())
}
