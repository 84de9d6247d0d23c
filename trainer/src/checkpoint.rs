//! Training checkpoints: model, optimiser state and trainer state in one
//! file, written atomically and checksummed so a truncated or foreign file is
//! refused with a clear message.
//!
//! Layout: `RGFLOWCK` | u32 version | u64 + JSON header | u64 + model weights
//! (rgflow burnpack) | u64 + optimiser state (burnpack) | u64 + the weights'
//! exponential moving average (rgflow burnpack; version 2, length 0 when the
//! run keeps none) | u32 CRC-32 of all preceding bytes. Integers are
//! little-endian. Version 1 files (no average) are still read.

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"RGFLOWCK";
const VERSION: u32 = 2;

/// Where training stands; everything random is derived from `seed` and
/// these counters, so this is all the RNG state there is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Position in the epoch's shuffled order.
    pub cursor: usize,
    /// Seconds spent training so far (over all sessions).
    pub train_seconds: f64,
    /// Images trained on so far.
    pub images_seen: u64,
    /// Updates of the weight average so far (0 for runs without one).
    #[serde(default)]
    pub average_updates: u64,
    /// The training images' [`crate::data::fingerprint`], checked on resume.
    #[serde(default)]
    pub data_fingerprint: Option<String>,
    /// The run's settings (model config, optimiser, data), as JSON.
    pub settings: serde_json::Value,
}

/// The parts of a checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub state: TrainState,
    /// The weights the optimiser updates.
    pub model: Vec<u8>,
    pub optimizer: Vec<u8>,
    /// Their exponential moving average (Polyak averaging), if the run keeps one.
    pub ema: Option<Vec<u8>>,
}

impl Checkpoint {
    /// Serialises to the container format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.state).expect("state serialises");
        let mut out = Vec::with_capacity(32 + header.len() + self.model.len() + self.optimizer.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let ema = self.ema.as_deref().unwrap_or_default();
        for part in [&header[..], &self.model, &self.optimizer, ema] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and validates the container format.
    pub fn from_bytes(bytes: &[u8], source: &Path) -> anyhow::Result<Self> {
        let name = source.display();
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            bail!("{name} is not an rgflow training checkpoint");
        }
        if bytes.len() < 16 {
            bail!("checkpoint {name} is truncated ({} bytes)", bytes.len());
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        // The checksum first: no length field of a damaged file is trusted.
        let crc = u32::from_le_bytes(tail.try_into().unwrap());
        if crc != crc32fast::hash(body) {
            bail!("checkpoint {name} is corrupt or truncated (checksum mismatch)");
        }
        let mut pos = 8;
        let version = u32::from_le_bytes(body[pos..pos + 4].try_into().unwrap());
        pos += 4;
        let names: &[&str] = match version {
            1 => &["header", "model", "optimiser state"],
            2 => &["header", "model", "optimiser state", "weight average"],
            _ => bail!("checkpoint {name} has format version {version}; this trainer reads versions 1 and {VERSION}"),
        };
        let mut parts = Vec::new();
        for &what in names {
            if body.len() < pos + 8 {
                bail!("checkpoint {name} is truncated (in its {what})");
            }
            let len = u64::from_le_bytes(body[pos..pos + 8].try_into().unwrap());
            pos += 8;
            let remaining = body.len() - pos;
            // Compared in u64: a damaged length near u64::MAX must not overflow `pos + len`.
            if len > remaining as u64 {
                bail!("checkpoint {name} is truncated: its {what} needs {len} bytes, {remaining} remain");
            }
            let len = len as usize;
            parts.push(body[pos..pos + len].to_vec());
            pos += len;
        }
        if pos != body.len() {
            bail!("checkpoint {name} has {} unexpected trailing bytes", body.len() - pos);
        }
        let ema = if version >= 2 { parts.pop().filter(|e| !e.is_empty()) } else { None };
        let optimizer = parts.pop().unwrap();
        let model = parts.pop().unwrap();
        let state = serde_json::from_slice(&parts[0]).with_context(|| format!("checkpoint {name}: bad header"))?;
        Ok(Self { state, model, optimizer, ema })
    }

    /// Writes atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        rgflow::weights::write_atomic(path, &self.to_bytes())?;
        Ok(())
    }

    /// Reads and validates a checkpoint file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
        Self::from_bytes(&bytes, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            state: TrainState {
                step: 7,
                epoch: 1,
                cursor: 64,
                train_seconds: 1.5,
                images_seen: 448,
                average_updates: 7,
                data_fingerprint: Some("12:abc".into()),
                settings: serde_json::json!({"lr": 1e-3}),
            },
            model: vec![1, 2, 3],
            optimizer: vec![4; 100],
            ema: Some(vec![5; 3]),
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let bytes = sample().to_bytes();
        let back = Checkpoint::from_bytes(&bytes, Path::new("c")).unwrap();
        assert_eq!(back.state, sample().state);
        assert_eq!((back.model, back.optimizer, back.ema), (vec![1, 2, 3], vec![4; 100], Some(vec![5; 3])));
        let without = Checkpoint { ema: None, ..sample() };
        assert_eq!(Checkpoint::from_bytes(&without.to_bytes(), Path::new("c")).unwrap().ema, None);
        for cut in [bytes.len() - 1, bytes.len() / 2, 10] {
            let err = Checkpoint::from_bytes(&bytes[..cut], Path::new("c")).err().unwrap().to_string();
            assert!(err.contains("truncated") || err.contains("corrupt"), "{err}");
        }
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert!(Checkpoint::from_bytes(&flipped, Path::new("c")).is_err());
        assert!(Checkpoint::from_bytes(b"PNG....", Path::new("c")).unwrap_err().to_string().contains("not an rgflow"));
    }

    #[test]
    fn lying_lengths_are_refused_without_overflow() {
        let mut bytes = sample().to_bytes();
        // The header's length field, set near u64::MAX, then the CRC fixed so
        // only the length is wrong.
        bytes[12..20].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        let err = Checkpoint::from_bytes(&bytes, Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn version_1_files_are_read_without_an_average() {
        // Version 1: header, model, optimiser; no average part.
        let header = serde_json::to_vec(&sample().state).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        for part in [&header[..], &[1, 2, 3], &[4; 100]] {
            bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
            bytes.extend_from_slice(part);
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let back = Checkpoint::from_bytes(&bytes, Path::new("c")).unwrap();
        assert_eq!((back.model, back.ema), (vec![1, 2, 3], None));
    }
}
