//! Loading a model for inference from either an exported weight file or a
//! training checkpoint, and writing image grids.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::prelude::*;
use rgflow::RgFlow;

use crate::checkpoint::Checkpoint;

/// The model the CLI and the web demo load when none is named.
pub const DEFAULT_MODEL: &str = "models/celeba32.rgflow";

/// `--model`, defaulting to the shipped face model (found from the working
/// directory or the workspace root).
pub fn resolve_model_path(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = path {
        return Ok(p);
    }
    let candidates =
        [PathBuf::from(DEFAULT_MODEL), Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DEFAULT_MODEL)];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("no --model given and the default model {DEFAULT_MODEL} is not there"))
}

/// Which of a checkpoint's weights to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WeightsChoice {
    /// The exponential moving average when the checkpoint keeps one (it
    /// scores better and samples cleaner), else the raw weights.
    #[default]
    Average,
    /// The weights the optimiser updates.
    Raw,
}

/// Loads weights from an rgflow weight file or a training checkpoint (its
/// weight average, when it keeps one).
pub fn load_model(path: &Path, device: &Device) -> anyhow::Result<RgFlow> {
    load_model_with(path, device, WeightsChoice::Average)
}

/// Loads weights from an rgflow weight file or a training checkpoint; `choice`
/// picks a checkpoint's raw weights or their average (a weight file holds one set).
pub fn load_model_with(path: &Path, device: &Device, choice: WeightsChoice) -> anyhow::Result<RgFlow> {
    let bytes = std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?;
    let weights = if bytes.starts_with(b"RGFLOWCK") {
        let ckpt = Checkpoint::from_bytes(&bytes, path)?;
        match (choice, ckpt.ema) {
            (WeightsChoice::Average, Some(ema)) => ema,
            _ => ckpt.model,
        }
    } else {
        bytes
    };
    Ok(rgflow::weights::from_bytes(weights, &path.display().to_string(), device)?)
}

/// Writes `[B, C, L, L]` images in `[0, 1]` as a PNG grid.
pub fn save_grid(images: Tensor<4>, cols: usize, zoom: u32, path: &Path) -> anyhow::Result<()> {
    let [b, c, l, _] = images.dims();
    let values = images.into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let per = c * l * l;
    let tiles: Vec<_> = (0..b)
        .map(|i| rgflow::pixels::chw_to_rgb(&rgflow::pixels::unit_to_u8(&values[i * per..(i + 1) * per]), c, l))
        .collect();
    let grid = rgflow::pixels::grid(&tiles, cols, zoom, 1, [255, 255, 255]);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    grid.save(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
