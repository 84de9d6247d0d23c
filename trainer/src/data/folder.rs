//! Every JPEG/PNG image below a folder (recursively), sorted by path.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Dataset, Holdout, Item, SourceSpec};
use rgflow::pixels::Crop;

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

fn walk(dir: &Path, images: &mut Vec<PathBuf>, others: &mut usize) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        // Symlinked folders are not followed: they can repeat images or loop.
        if entry.file_type()?.is_symlink() && path.is_dir() {
            *others += 1;
        } else if path.is_dir() {
            walk(&path, images, others)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            images.push(path);
        } else {
            *others += 1;
        }
    }
    Ok(())
}

/// `crop=square` (default), `crop=none`, `crop=celeba` (CelebA's 148 of
/// 178, for copies of its aligned frames), or `crop=F`: a square whose side
/// is F times the width — above 1 it reaches past the image, whose edge
/// pixels fill the outside — centred, or moved by `crop-dx=`/`crop-dy=`
/// (fractions of the width, right and down).
fn parse_crop(spec: &mut SourceSpec) -> anyhow::Result<Crop> {
    let dx: Option<f64> = spec.take("crop-dx")?;
    let dy: Option<f64> = spec.take("crop-dy")?;
    let text = spec.options.remove("crop");
    let crop = match text.as_deref() {
        None | Some("square") => Crop::CenterSquare,
        Some("none") => Crop::None,
        Some("celeba") => Crop::CenterFractionOfWidth(super::celeba::CROP_OF_WIDTH),
        Some(f) => match f.parse::<f64>() {
            Ok(side) if side > 0.0 && side <= 4.0 => {
                Crop::Window { side, dx: dx.unwrap_or(0.0), dy: dy.unwrap_or(0.0) }
            }
            _ => anyhow::bail!("crop={f}: expected square, none, celeba or a fraction of the width in (0, 4]"),
        },
    };
    if (dx.is_some() || dy.is_some()) && !matches!(crop, Crop::Window { .. }) {
        anyhow::bail!("crop-dx/crop-dy move a crop=F window; give crop=F too");
    }
    if [dx, dy].into_iter().flatten().any(|d| !d.is_finite() || d.abs() > 2.0) {
        anyhow::bail!("crop-dx/crop-dy must lie in [-2, 2] (fractions of the width)");
    }
    Ok(crop)
}

pub fn open(spec: &mut SourceSpec) -> anyhow::Result<Dataset> {
    let root = spec.path().to_path_buf();
    if !root.is_dir() {
        anyhow::bail!("image folder {} does not exist", root.display());
    }
    let holdout = Holdout::from_spec(spec)?;
    let crop = parse_crop(spec)?;
    let mut paths = Vec::new();
    let mut others = 0;
    walk(&root, &mut paths, &mut others)?;
    paths.sort();
    let items: Vec<Item> = paths.into_iter().map(|path| Item::File { path, crop }).collect();
    let n = items.len();
    let (train, test) = match holdout {
        Some(h) => h.apply(items)?,
        None => (items, Vec::new()),
    };
    let description = format!(
        "folder {}: {n} images ({others} other files ignored), crop {crop:?}: {} train / {} test",
        root.display(),
        train.len(),
        test.len()
    );
    Ok(Dataset { train, test, descriptions: vec![description] })
}
