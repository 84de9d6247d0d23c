//! CIFAR-10 from its binary batches (`data_batch_1..5.bin`, `test_batch.bin`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use super::{Dataset, Item, SourceSpec};

const RECORD: usize = 1 + 3 * 32 * 32;

fn load(path: &Path) -> anyhow::Result<Vec<Item>> {
    let bytes = std::fs::read(path).with_context(|| format!("CIFAR-10 batch {}", path.display()))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        anyhow::bail!("{}: {} bytes is not a whole number of {RECORD}-byte records", path.display(), bytes.len());
    }
    Ok(bytes
        .chunks_exact(RECORD)
        .map(|rec| {
            // Records are [label, R plane, G plane, B plane]; items are [H, W, C].
            let planes = &rec[1..];
            let hwc: Vec<u8> = (0..1024).flat_map(|p| [planes[p], planes[1024 + p], planes[2048 + p]]).collect();
            Item::Pixels { width: 32, height: 32, channels: 3, data: Arc::from(hwc) }
        })
        .collect())
}

pub fn open(spec: &mut SourceSpec) -> anyhow::Result<Dataset> {
    let mut dir: PathBuf = spec.path().to_path_buf();
    if !dir.join("test_batch.bin").is_file() && dir.join("cifar-10-batches-bin").is_dir() {
        dir = dir.join("cifar-10-batches-bin");
    }
    let mut train = Vec::new();
    for i in 1..=5 {
        train.extend(load(&dir.join(format!("data_batch_{i}.bin")))?);
    }
    let test = load(&dir.join("test_batch.bin"))?;
    let description = format!("cifar10 {}: {} train / {} test", dir.display(), train.len(), test.len());
    Ok(Dataset { train, test, descriptions: vec![description] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_planar_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = vec![3u8];
        rec.extend(
            std::iter::repeat_n(10, 1024).chain(std::iter::repeat_n(20, 1024)).chain(std::iter::repeat_n(30, 1024)),
        );
        for i in 1..=5 {
            std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), &rec).unwrap();
        }
        std::fs::write(dir.path().join("test_batch.bin"), &rec[..100]).unwrap();
        let mut spec: SourceSpec = format!("cifar10:{}", dir.path().display()).parse().unwrap();
        assert!(open(&mut spec).is_err(), "a truncated batch is refused");
        std::fs::write(dir.path().join("test_batch.bin"), &rec).unwrap();
        let ds = open(&mut spec).unwrap();
        assert_eq!((ds.train.len(), ds.test.len()), (5, 1));
        let Item::Pixels { data, .. } = &ds.test[0] else { panic!() };
        assert_eq!(&data[..3], &[10, 20, 30]);
    }
}
