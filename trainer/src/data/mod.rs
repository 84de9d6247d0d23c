//! Datasets: where images come from, how they are split, and how they are
//! batched for training and evaluation.
//!
//! A data source is given as `KIND[:PATH][,key=value...]`, for example
//! `celeba:../shared/data/celeba,test-last=1000` or `msds1,train=20000`.
//! Several `--data` sources are concatenated split by split.

mod celeba;
mod cifar;
mod folder;
mod loader;
mod mnist;
pub mod msds;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rgflow::pixels::Crop;

pub use loader::{Batch, EpochOptions, Loader, images_tensor, load_item};

/// One image of a dataset, decoded lazily by the loader.
#[derive(Debug, Clone)]
pub enum Item {
    /// An encoded image file (JPEG or PNG) and how to crop it.
    File { path: PathBuf, crop: Crop },
    /// Raw pixels already in memory, `[H, W, C]` bytes.
    Pixels { width: u32, height: u32, channels: u8, data: Arc<[u8]> },
    /// A synthetic MSDS image, rendered on demand from its seed.
    Synthetic { variant: msds::Variant, seed: u64, split: u64, index: u64 },
}

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Split {
    /// Images that may be trained on.
    Train,
    /// Held-out images; never trained on.
    Test,
}

/// The images of every split, from one or more sources.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Trainable images.
    pub train: Vec<Item>,
    /// Held-out images.
    pub test: Vec<Item>,
    /// One line per source, for logs.
    pub descriptions: Vec<String>,
}

impl Dataset {
    /// The items of a split; an empty split is an error naming the sources.
    pub fn split(&self, split: Split) -> anyhow::Result<&[Item]> {
        let items = match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        };
        if items.is_empty() {
            anyhow::bail!(
                "the {split:?} split is empty (sources: {}); add test-last=N or test-fraction=F to a source to hold images out",
                self.descriptions.join("; ")
            );
        }
        Ok(items)
    }
}

/// A parsed `KIND[:PATH][,key=value...]` source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    pub kind: String,
    pub path: Option<PathBuf>,
    pub options: BTreeMap<String, String>,
}

impl std::str::FromStr for SourceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // Options follow the last comma-separated `key=value` pieces; a path may
        // itself contain commas only if no piece after it has an `=`.
        let mut pieces: Vec<&str> = s.split(',').collect();
        let mut options = BTreeMap::new();
        while pieces.len() > 1 && pieces.last().is_some_and(|p| p.contains('=')) {
            let (k, v) = pieces.pop().unwrap().split_once('=').unwrap();
            options.insert(k.trim().to_string(), v.trim().to_string());
        }
        let head = pieces.join(",");
        let (kind, path) = match head.split_once(':') {
            Some((k, p)) => (k.to_string(), Some(PathBuf::from(p))),
            None => (head.clone(), None),
        };
        const KINDS: [&str; 6] = ["celeba", "folder", "mnist", "cifar10", "msds1", "msds2"];
        if !KINDS.contains(&kind.as_str()) {
            return Err(format!("unknown data kind `{kind}` (one of {})", KINDS.join(", ")));
        }
        if path.is_none() && !kind.starts_with("msds") {
            return Err(format!("`{kind}` needs a folder: `{kind}:DIR`"));
        }
        Ok(Self { kind, path, options })
    }
}

impl SourceSpec {
    fn take<T: std::str::FromStr>(&mut self, key: &str) -> anyhow::Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.options.remove(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| anyhow::anyhow!("data option {key}={v}: {e}")),
        }
    }

    fn path(&self) -> &Path {
        self.path.as_deref().expect("checked when parsed")
    }
}

/// How a source holds images out for testing, when it has no official split.
#[derive(Debug, Clone, Copy)]
enum Holdout {
    /// The last `n` images in sorted order.
    Last(usize),
    /// Every image whose index falls in the last `f` of each block of 1/f —
    /// spread over the whole (sorted) list.
    Fraction(f64),
}

impl Holdout {
    fn from_spec(spec: &mut SourceSpec) -> anyhow::Result<Option<Self>> {
        let last: Option<usize> = spec.take("test-last")?;
        let fraction: Option<f64> = spec.take("test-fraction")?;
        match (last, fraction) {
            (Some(_), Some(_)) => anyhow::bail!("give test-last or test-fraction, not both"),
            (Some(n), None) => Ok(Some(Holdout::Last(n))),
            (None, Some(f)) if (0.0..1.0).contains(&f) => Ok(Some(Holdout::Fraction(f))),
            (None, Some(f)) => anyhow::bail!("test-fraction must lie in [0, 1), got {f}"),
            (None, None) => Ok(None),
        }
    }

    /// Splits a sorted list into (train, test).
    fn apply<T>(self, items: Vec<T>) -> anyhow::Result<(Vec<T>, Vec<T>)> {
        let n = items.len();
        match self {
            Holdout::Last(k) => {
                if k > n {
                    anyhow::bail!("test-last={k} but the source has only {n} images");
                }
                let mut train = items;
                let test = train.split_off(n - k);
                Ok((train, test))
            }
            Holdout::Fraction(f) => {
                let (mut train, mut test) = (Vec::new(), Vec::new());
                for (i, item) in items.into_iter().enumerate() {
                    // Item i is held out when the running count of held-out items rises.
                    if ((i + 1) as f64 * f).floor() > (i as f64 * f).floor() {
                        test.push(item);
                    } else {
                        train.push(item);
                    }
                }
                Ok((train, test))
            }
        }
    }
}

/// A short fingerprint of a list of items (count and a hash of their file
/// names, sizes of raw images and synthetic seeds), to notice that a resumed
/// run would train on other images.
pub fn fingerprint(items: &[Item]) -> String {
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
        }
    };
    for item in items {
        match item {
            Item::File { path, crop } => {
                eat(path.as_os_str().as_encoded_bytes());
                eat(format!("{crop:?}").as_bytes());
            }
            Item::Pixels { width, height, channels, data } => {
                eat(&[width.to_le_bytes(), height.to_le_bytes()].concat());
                eat(&[*channels]);
                eat(&data[..data.len().min(64)]);
            }
            Item::Synthetic { variant, seed, split, index } => {
                eat(format!("{variant:?}").as_bytes());
                eat(&[seed.to_le_bytes(), split.to_le_bytes(), index.to_le_bytes()].concat());
            }
        }
        eat(b"\n");
    }
    format!("{}:{h:016x}", items.len())
}

/// Opens every source and concatenates their splits.
pub fn open(specs: &[SourceSpec]) -> anyhow::Result<Dataset> {
    if specs.is_empty() {
        anyhow::bail!("no data source given (e.g. --data msds1 or --data celeba:DIR)");
    }
    let mut dataset = Dataset::default();
    for spec in specs {
        let mut spec = spec.clone();
        let part = match spec.kind.as_str() {
            "celeba" => celeba::open(&mut spec)?,
            "folder" => folder::open(&mut spec)?,
            "mnist" => mnist::open(&mut spec)?,
            "cifar10" => cifar::open(&mut spec)?,
            "msds1" => msds::open(&mut spec, msds::Variant::Msds1)?,
            "msds2" => msds::open(&mut spec, msds::Variant::Msds2)?,
            other => unreachable!("kind {other} checked when parsed"),
        };
        if let Some(key) = spec.options.keys().next() {
            anyhow::bail!("unknown option `{key}` for data source `{}`", spec.kind);
        }
        if part.train.is_empty() && part.test.is_empty() {
            anyhow::bail!("data source `{}` holds no images", part.descriptions.join(" "));
        }
        dataset.train.extend(part.train);
        dataset.test.extend(part.test);
        dataset.descriptions.extend(part.descriptions);
    }
    Ok(dataset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_kind_path_and_options() {
        let s: SourceSpec = "celeba:/data/celeba,test-last=1000".parse().unwrap();
        assert_eq!(s.kind, "celeba");
        assert_eq!(s.path.as_deref(), Some(Path::new("/data/celeba")));
        assert_eq!(s.options["test-last"], "1000");
        let s: SourceSpec = "msds2".parse().unwrap();
        assert!(s.path.is_none() && s.options.is_empty());
        assert!("imagenet:/x".parse::<SourceSpec>().is_err());
        assert!("folder".parse::<SourceSpec>().is_err());
    }

    #[test]
    fn holdouts_split_sorted_lists() {
        let (train, test) = Holdout::Last(2).apply((0..5).collect()).unwrap();
        assert_eq!((train, test), (vec![0, 1, 2], vec![3, 4]));
        let (train, test) = Holdout::Fraction(0.25).apply((0..8).collect()).unwrap();
        assert_eq!(test, vec![3, 7]);
        assert_eq!(train.len(), 6);
        assert!(Holdout::Last(9).apply((0..5).collect::<Vec<_>>()).is_err());
    }
}
