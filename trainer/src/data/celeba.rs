//! CelebA (`img_align_celeba/` + `list_eval_partition.txt`) with the authors'
//! preprocessing: centre crop 148 of 178×218 — in proportion for copies of
//! another size — then resize to L (random flips are the loader's job).

use anyhow::Context;

use super::{Dataset, Holdout, Item, SourceSpec};
use rgflow::pixels::Crop;

/// The official crop, as a fraction of the width.
pub const CROP_OF_WIDTH: f64 = 148.0 / 178.0;

pub fn open(spec: &mut SourceSpec) -> anyhow::Result<Dataset> {
    let root = spec.path().to_path_buf();
    let holdout = Holdout::from_spec(spec)?;
    let images = root.join("img_align_celeba");
    let partition_file = root.join("list_eval_partition.txt");
    let partition = std::fs::read_to_string(&partition_file)
        .with_context(|| format!("CelebA partition file {}", partition_file.display()))?;
    if !images.is_dir() {
        anyhow::bail!("CelebA image folder {} is missing", images.display());
    }
    let crop = Crop::CenterFractionOfWidth(CROP_OF_WIDTH);
    let mut listed = 0;
    let mut present: Vec<(String, u8)> = Vec::new();
    for (line_no, line) in partition.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (name, part) = line
            .split_once(char::is_whitespace)
            .and_then(|(n, p)| Some((n, p.trim().parse::<u8>().ok()?)))
            .filter(|&(_, p)| p <= 2)
            .with_context(|| {
                format!("{}:{}: expected `NAME.jpg 0|1|2`, got `{line}`", partition_file.display(), line_no + 1)
            })?;
        // A bare file name: `/abs`, `../x` or `a/b` would reach outside the image folder.
        let mut parts = std::path::Path::new(name).components();
        if !matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None)) {
            anyhow::bail!("{}:{}: `{name}` is not a plain file name", partition_file.display(), line_no + 1);
        }
        listed += 1;
        if images.join(name).is_file() {
            present.push((name.to_string(), part));
        }
    }
    present.sort();
    let item = |name: &str| Item::File { path: images.join(name), crop };
    let (train, test, how) = match holdout {
        // An explicit hold-out replaces the official partition.
        Some(h) => {
            let (train, test) = h.apply(present.iter().map(|(n, _)| item(n)).collect())?;
            (train, test, format!("{h:?} held out"))
        }
        None => {
            let pick = |p: u8| present.iter().filter(|(_, q)| *q == p).map(|(n, _)| item(n)).collect::<Vec<_>>();
            (pick(0), pick(2), "official partition (validation unused)".to_string())
        }
    };
    let description = format!(
        "celeba {}: {} of {listed} listed images present, {how}: {} train / {} test",
        root.display(),
        present.len(),
        train.len(),
        test.len()
    );
    Ok(Dataset { train, test, descriptions: vec![description] })
}
