//! What the native and the browser tests share: the shipped weights and the
//! seeded sample that both must reproduce.

#![allow(dead_code)]

/// The weights the page loads by default.
pub const WEIGHTS: &[u8] = include_bytes!("../../../models/celeba32.rgflow");

/// The sample drawn natively by `native.rs` (regenerate with `RGFLOW_BLESS=1`).
pub const FIXTURE: &str = include_str!("../fixtures/sample.json");

pub const SEED: u64 = 7;
pub const FACES: usize = 2;
/// Largest pixel difference allowed between backends (values in `[0, 1]`).
pub const TOLERANCE: f32 = 2e-3;

pub fn temperatures(levels: usize) -> Vec<f64> {
    (0..levels).map(|l| 0.5 + 0.1 * l as f64).collect()
}

/// A fingerprint of weight bytes (FNV-1a, hex): retrained weights of the
/// same size have another one.
pub fn weights_fingerprint(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3));
    format!("{h:016x}")
}

/// The fixture's pixels, and the fingerprint of the weights it was made with.
pub fn fixture() -> (Vec<f32>, String) {
    let v: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    let pixels = v["x01"].as_array().expect("x01").iter().map(|p| p.as_f64().unwrap() as f32).collect();
    (pixels, v["weights_fnv"].as_str().unwrap_or("none").to_string())
}

/// Largest absolute difference.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "different lengths");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A 6×6 square in the middle of an `size×size` mask.
pub fn centre_mask(size: usize) -> Vec<bool> {
    (0..size * size).map(|s| (s / size).abs_diff(size / 2) < 3 && (s % size).abs_diff(size / 2) < 3).collect()
}

/// Checks an inpainting result against the face it started from: every pixel
/// outside `mask` (`[L·L]`, all channels) is unchanged, some inside changed.
pub fn assert_inpainted(before: &[f32], after: &[f32], mask: &[bool], what: &str) {
    let plane = mask.len();
    let mut changed = 0;
    for (e, (a, b)) in before.iter().zip(after).enumerate() {
        if mask[e % plane] {
            changed += usize::from(a != b);
        } else {
            assert_eq!(a, b, "{what}: known pixel {e} changed");
        }
    }
    assert!(changed > 0, "{what}: the hole did not change");
}
