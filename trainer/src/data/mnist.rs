//! MNIST from its IDX files, padded from 28 to 32 as the authors do.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::{Dataset, Item, SourceSpec};

/// Reads an IDX3 image file: `(count, rows, cols, pixels)`.
fn read_idx_images(path: &Path) -> anyhow::Result<(usize, usize, usize, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("MNIST file {}", path.display()))?;
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
    if bytes.len() < 16 || be(0) != 0x0803 {
        anyhow::bail!("{} is not an IDX image file (bad magic number)", path.display());
    }
    let (n, rows, cols) = (be(4), be(8), be(12));
    // Checked: a lying header must not overflow into a plausible size.
    let needed = n.checked_mul(rows).and_then(|v| v.checked_mul(cols)).and_then(|v| v.checked_add(16));
    if rows == 0 || cols == 0 || needed != Some(bytes.len()) {
        anyhow::bail!("{}: header says {n}×{rows}×{cols} but the file has {} bytes", path.display(), bytes.len());
    }
    Ok((n, rows, cols, bytes[16..].to_vec()))
}

fn find(dir: &Path, stem: &str) -> anyhow::Result<std::path::PathBuf> {
    for name in [stem.to_string(), stem.replace("-idx3", ".idx3")] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!("{} has no `{stem}` file (the uncompressed IDX files are needed)", dir.display())
}

fn load(path: &Path) -> anyhow::Result<Vec<Item>> {
    let (n, rows, cols, pixels) = read_idx_images(path)?;
    let pad = 2;
    let (w, h) = (cols + 2 * pad, rows + 2 * pad);
    Ok((0..n)
        .map(|i| {
            let mut padded = vec![0u8; w * h];
            for r in 0..rows {
                let src = &pixels[(i * rows + r) * cols..][..cols];
                padded[(r + pad) * w + pad..][..cols].copy_from_slice(src);
            }
            Item::Pixels { width: w as u32, height: h as u32, channels: 1, data: Arc::from(padded) }
        })
        .collect())
}

pub fn open(spec: &mut SourceSpec) -> anyhow::Result<Dataset> {
    let dir = spec.path().to_path_buf();
    let train = load(&find(&dir, "train-images-idx3-ubyte")?)?;
    let test = load(&find(&dir, "t10k-images-idx3-ubyte")?)?;
    let description = format!("mnist {}: {} train / {} test, padded to 32", dir.display(), train.len(), test.len());
    Ok(Dataset { train, test, descriptions: vec![description] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_pads_idx() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
        bytes.extend((0..2 * 28 * 28).map(|i| (i % 251) as u8));
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), &bytes).unwrap();
        std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), &bytes).unwrap();
        let mut spec: SourceSpec = format!("mnist:{}", dir.path().display()).parse().unwrap();
        let ds = open(&mut spec).unwrap();
        assert_eq!((ds.train.len(), ds.test.len()), (2, 2));
        let Item::Pixels { width, data, .. } = &ds.train[1] else { panic!() };
        assert_eq!(*width, 32);
        assert_eq!(data[0], 0);
        assert_eq!(data[2 * 32 + 2], (784 % 251) as u8);
        std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), &bytes[..100]).unwrap();
        assert!(open(&mut spec).is_err());
        // Counts whose product overflows 64 bits are refused, not wrapped.
        let mut lying = bytes.clone();
        lying[4..16].copy_from_slice(&[0xFF; 12]);
        std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), &lying).unwrap();
        assert!(open(&mut spec).unwrap_err().to_string().contains("header says"));
    }
}
