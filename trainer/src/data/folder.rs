//! Every JPEG/PNG image below a folder (recursively), sorted by path.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Dataset, Holdout, Item, SourceSpec};
use rgflow::pixels::Crop;

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

fn walk(dir: &Path, images: &mut Vec<PathBuf>, others: &mut usize) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
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

/// `crop=square` (default), `crop=none`, or `crop=F`: a centred square whose
/// side is the fraction F of the width.
fn parse_crop(text: Option<String>) -> anyhow::Result<Crop> {
    match text.as_deref() {
        None | Some("square") => Ok(Crop::CenterSquare),
        Some("none") => Ok(Crop::None),
        Some(f) => match f.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Ok(Crop::CenterFractionOfWidth(f)),
            _ => anyhow::bail!("crop={f}: expected square, none or a fraction in (0, 1]"),
        },
    }
}

pub fn open(spec: &mut SourceSpec) -> anyhow::Result<Dataset> {
    let root = spec.path().to_path_buf();
    if !root.is_dir() {
        anyhow::bail!("image folder {} does not exist", root.display());
    }
    let holdout = Holdout::from_spec(spec)?;
    let crop = parse_crop(spec.options.remove("crop"))?;
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
