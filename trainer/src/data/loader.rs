//! Batches for training and evaluation, assembled on a background thread so
//! decoding and augmentation overlap the training step.
//!
//! Everything random here — the epoch's order, flips, dequantisation noise —
//! is a pure function of `(seed, epoch, position)`, so a run resumed from a
//! checkpoint sees exactly the batches an uninterrupted run would have.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rgflow::pixels::{self, Crop};

use super::{Item, msds};

/// Counts of images that could not be read.
#[derive(Debug, Default)]
pub struct LoaderStats {
    skipped: AtomicUsize,
    examples: Mutex<Vec<String>>,
}

impl LoaderStats {
    /// Number of distinct unreadable images met so far.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The first few of them, with the reason.
    pub fn examples(&self) -> Vec<String> {
        self.examples.lock().unwrap().clone()
    }
}

/// One batch, `[len, C, L, L]` values.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Pixel values: `(k + u)/256` when dequantised, else `k/255`.
    pub x01: Vec<f32>,
    /// Images in the batch.
    pub len: usize,
    /// Position in the epoch's order just after this batch (for resuming).
    pub cursor: usize,
}

/// `len` images' pixels (a batch's, possibly transformed) as a
/// `[len, C, L, L]` tensor for a model with `config`.
pub fn images_tensor(
    values: Vec<f32>,
    len: usize,
    config: &rgflow::RgFlowConfig,
    device: &burn::prelude::Device,
) -> burn::prelude::Tensor<4> {
    let shape = [len, config.channels, config.image_size, config.image_size];
    burn::prelude::Tensor::from_data(burn::tensor::TensorData::new(values, shape), device)
}

/// Decodes, caches and batches the items of one split.
pub struct Loader {
    /// Shared with the background thread of every epoch.
    worker: Arc<Worker>,
}

fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

fn key(seed: u64, tag: u64, a: u64, b: u64) -> u64 {
    mix(mix(mix(seed ^ tag) ^ a) ^ b)
}

/// What `epoch()` should do to the images.
#[derive(Debug, Clone, Copy)]
pub struct EpochOptions {
    /// Shuffle the order (training).
    pub shuffle: bool,
    /// Random horizontal flips (training).
    pub flip: bool,
    /// Add uniform dequantisation noise.
    pub dequantize: bool,
    /// Images per batch.
    pub batch_size: usize,
}

impl Loader {
    /// A loader producing `channels × size × size` images.
    pub fn new(items: Vec<Item>, size: usize, channels: usize, seed: u64, workers: usize) -> Self {
        let cache = (0..items.len()).map(|_| OnceLock::new()).collect();
        let worker =
            Worker { items, cache, size, channels, seed, workers: workers.max(1), stats: LoaderStats::default() };
        Self { worker: Arc::new(worker) }
    }

    /// Number of items (readable or not).
    pub fn len(&self) -> usize {
        self.worker.items.len()
    }

    /// Unreadable-image counts.
    pub fn stats(&self) -> &LoaderStats {
        &self.worker.stats
    }

    /// The order of epoch `epoch`: shuffled from `(seed, epoch)`, or sequential.
    pub fn order(&self, epoch: u64, shuffle: bool) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if shuffle {
            order.shuffle(&mut StdRng::seed_from_u64(key(self.worker.seed, 1, epoch, 0)));
        }
        order
    }

    /// Streams the batches of `epoch` from position `cursor` of its order.
    pub fn epoch(&self, epoch: u64, cursor: usize, options: EpochOptions) -> Epoch {
        let (tx, rx) = sync_channel(3);
        let order = self.order(epoch, options.shuffle);
        let worker = self.worker.clone();
        let thread = std::thread::spawn(move || {
            let mut cursor = cursor;
            while cursor < order.len() {
                let start = cursor;
                let mut images: Vec<(usize, Arc<[u8]>)> = Vec::with_capacity(options.batch_size);
                while images.len() < options.batch_size && cursor < order.len() {
                    let want = (options.batch_size - images.len()).min(order.len() - cursor);
                    let positions: Vec<usize> = (cursor..cursor + want).collect();
                    let decoded = worker.decode_many(positions.iter().map(|&p| order[p]).collect());
                    images.extend(positions.into_iter().zip(decoded).filter_map(|(p, d)| Some((p, d?))));
                    cursor += want;
                }
                if images.is_empty() {
                    break;
                }
                let batch = worker.assemble(&images, epoch, start, options, cursor);
                if tx.send(batch).is_err() {
                    return; // the consumer stopped
                }
            }
        });
        Epoch { batches: rx, thread: Some(thread) }
    }
}

/// The batches of one epoch, assembled on a background thread. A thread that
/// fails (a panicking decoder) ends the stream with an error rather than
/// passing for the end of the epoch.
pub struct Epoch {
    batches: Receiver<Batch>,
    thread: Option<JoinHandle<()>>,
}

impl Iterator for Epoch {
    type Item = anyhow::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Ok(batch) = self.batches.recv() {
            return Some(Ok(batch));
        }
        // The channel closed: the epoch ended, or the thread died.
        let panic = self.thread.take()?.join().err()?;
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Some(Err(anyhow::anyhow!("the image loader failed mid-epoch ({why}); the rest of the epoch was not read")))
    }
}

/// The loader's state, used by the background thread.
struct Worker {
    items: Vec<Item>,
    /// Decoded images by item index: `None` once an item proved unreadable.
    cache: Vec<OnceLock<Option<Arc<[u8]>>>>,
    size: usize,
    channels: usize,
    seed: u64,
    workers: usize,
    stats: LoaderStats,
}

impl Worker {
    fn decode(&self, index: usize) -> Option<Arc<[u8]>> {
        self.cache[index]
            .get_or_init(|| match load_item(&self.items[index], self.size, self.channels) {
                Ok(pixels) => Some(Arc::from(pixels)),
                Err(e) => {
                    self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    let mut examples = self.stats.examples.lock().unwrap();
                    if examples.len() < 5 {
                        examples.push(e.to_string());
                    }
                    None
                }
            })
            .clone()
    }

    /// Decodes several items on up to `workers` threads, keeping their order.
    fn decode_many(&self, indices: Vec<usize>) -> Vec<Option<Arc<[u8]>>> {
        let chunk = indices.len().div_ceil(self.workers).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = indices
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().map(|&i| self.decode(i)).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("decoder thread panicked")).collect()
        })
    }

    fn assemble(
        &self,
        images: &[(usize, Arc<[u8]>)],
        epoch: u64,
        start: usize,
        options: EpochOptions,
        cursor: usize,
    ) -> Batch {
        let per_image = self.channels * self.size * self.size;
        let mut x01 = Vec::with_capacity(images.len() * per_image);
        let mut noise = StdRng::seed_from_u64(key(self.seed, 2, epoch, start as u64));
        for (position, pixels) in images {
            let mut pixels = pixels.to_vec();
            if options.flip && key(self.seed, 3, epoch, *position as u64) & 1 == 1 {
                pixels::flip_horizontal(&mut pixels, self.size);
            }
            if options.dequantize {
                x01.extend(
                    pixels.iter().map(|&k| rgflow::preprocess::dequantize_level(k as f32, noise.random::<f32>())),
                );
            } else {
                x01.extend(pixels.iter().map(|&k| rgflow::preprocess::from_level(k)));
            }
        }
        Batch { x01, len: images.len(), cursor }
    }
}

/// Decodes one item to `[C, L, L]` bytes.
pub fn load_item(item: &Item, size: usize, channels: usize) -> anyhow::Result<Vec<u8>> {
    match item {
        Item::File { path, crop } => {
            // Image files are small; a huge one is not an image to read whole.
            const MAX_FILE_BYTES: u64 = 64 << 20;
            let file_size = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?.len();
            if file_size > MAX_FILE_BYTES {
                anyhow::bail!(
                    "{}: {file_size} bytes, more than the {MAX_FILE_BYTES} an image file may have",
                    path.display()
                );
            }
            let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            pixels::decode_and_prepare(&bytes, *crop, size, channels)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Item::Pixels { width, height, channels: c, data } => {
            from_raw(*width, *height, *c, data.to_vec(), size, channels)
        }
        Item::Synthetic { variant, seed, split, index } => {
            let (rgb, _) = msds::render(*variant, *seed, *split, *index);
            from_raw(32, 32, 3, rgb, size, channels)
        }
    }
}

fn from_raw(width: u32, height: u32, c: u8, data: Vec<u8>, size: usize, channels: usize) -> anyhow::Result<Vec<u8>> {
    let len = data.len();
    let img = match c {
        1 => image::GrayImage::from_raw(width, height, data).map(image::DynamicImage::ImageLuma8),
        3 => image::RgbImage::from_raw(width, height, data).map(image::DynamicImage::ImageRgb8),
        n => anyhow::bail!("{n}-channel raw images are not supported"),
    };
    let img = img.with_context(|| {
        format!(
            "a {width}×{height}×{c} raw image needs {} bytes, got {len}",
            width as usize * height as usize * c as usize
        )
    })?;
    Ok(pixels::prepare(&img, Crop::None, size, channels)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(n: u64) -> Vec<Item> {
        (0..n).map(|index| Item::Synthetic { variant: msds::Variant::Msds1, seed: 1, split: 0, index }).collect()
    }

    const TRAIN: EpochOptions = EpochOptions { shuffle: true, flip: true, dequantize: true, batch_size: 4 };

    #[test]
    fn batches_are_reproducible_and_resumable() {
        let loader = Loader::new(synthetic(10), 16, 3, 5, 2);
        let full: Vec<Batch> = loader.epoch(3, 0, TRAIN).collect::<anyhow::Result<_>>().unwrap();
        assert_eq!(full.iter().map(|b| b.len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let again: Vec<Batch> =
            Loader::new(synthetic(10), 16, 3, 5, 1).epoch(3, 0, TRAIN).collect::<anyhow::Result<_>>().unwrap();
        assert_eq!(full[1].x01, again[1].x01);
        let resumed: Vec<Batch> = loader.epoch(3, full[0].cursor, TRAIN).collect::<anyhow::Result<_>>().unwrap();
        assert_eq!(resumed[0].x01, full[1].x01);
        let other_epoch: Vec<Batch> = loader.epoch(4, 0, TRAIN).collect::<anyhow::Result<_>>().unwrap();
        assert_ne!(other_epoch[0].x01, full[0].x01);
        assert!(full[0].x01.iter().all(|&v| (0.0..1.0).contains(&v)));
    }

    #[test]
    fn a_failing_loader_thread_is_an_error_not_the_end_of_an_epoch() {
        let (tx, rx) = sync_channel(1);
        let thread = std::thread::spawn(move || {
            tx.send(Batch { x01: vec![0.5], len: 1, cursor: 1 }).unwrap();
            panic!("decoder exploded");
        });
        let mut epoch = Epoch { batches: rx, thread: Some(thread) };
        assert!(epoch.next().unwrap().is_ok());
        let err = epoch.next().unwrap().unwrap_err().to_string();
        assert!(err.contains("decoder exploded") && err.contains("mid-epoch"), "{err}");
        assert!(epoch.next().is_none());
        // Raw pixels of the wrong size are an error, not a panic.
        let bad = Item::Pixels { width: 4, height: 4, channels: 3, data: Arc::from(vec![0u8; 5]) };
        assert!(load_item(&bad, 4, 3).unwrap_err().to_string().contains("needs 48 bytes"));
    }

    #[test]
    fn unreadable_files_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.png");
        image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10])).save(&good).unwrap();
        let bad = dir.path().join("bad.jpg");
        std::fs::write(&bad, b"\xFF\xD8\xFF\xE0 truncated").unwrap();
        let items = vec![
            Item::File { path: good.clone(), crop: Crop::CenterSquare },
            Item::File { path: bad, crop: Crop::CenterSquare },
            Item::File { path: good, crop: Crop::CenterSquare },
        ];
        let loader = Loader::new(items, 4, 3, 0, 2);
        let opts = EpochOptions { shuffle: false, flip: false, dequantize: false, batch_size: 2 };
        let batches: Vec<Batch> = loader.epoch(0, 0, opts).collect::<anyhow::Result<_>>().unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].len, 2);
        assert_eq!(loader.stats().skipped(), 1);
        assert!(loader.stats().examples()[0].contains("bad.jpg"));
    }
}
