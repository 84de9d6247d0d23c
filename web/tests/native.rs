//! The demo's engine natively: the seeded sample that the browser tests
//! compare against, inpainting, and a refused weight file.

#![cfg(not(target_arch = "wasm32"))]

mod common;

use burn::prelude::*;
use common::*;
use rgflow_web::{BackendKind, Engine};

fn engine() -> Engine {
    Engine::load(WEIGHTS.to_vec(), "models/celeba32.rgflow", Device::flex(), BackendKind::Cpu).unwrap()
}

#[test]
fn seeded_sample_matches_the_fixture() {
    let engine = engine();
    let faces = pollster::block_on(engine.sample(FACES, &temperatures(engine.levels()), SEED)).unwrap();
    let pixels: Vec<f32> = faces.iter().flat_map(|f| f.x01.clone()).collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sample.json");
    if std::env::var_os("RGFLOW_BLESS").is_some() {
        let json = serde_json::json!({
            "what": "rgflow-web: native sample of models/celeba32.rgflow (tests/common/mod.rs: SEED, FACES, temperatures)",
            "weights_fnv": weights_fingerprint(WEIGHTS),
            "x01": pixels,
        });
        std::fs::write(path, serde_json::to_string(&json).unwrap()).unwrap();
        return;
    }
    let (expected, fingerprint) = fixture();
    assert_eq!(
        fingerprint,
        weights_fingerprint(WEIGHTS),
        "the weights changed: regenerate the fixture with RGFLOW_BLESS=1 cargo test -p rgflow-web --test native"
    );
    let diff = max_diff(&pixels, &expected);
    assert!(diff <= TOLERANCE, "native sample differs from the fixture by {diff}");
}

#[test]
fn inpainting_keeps_known_pixels_and_changes_the_hole() {
    let engine = engine();
    let face = pollster::block_on(engine.sample(1, &temperatures(engine.levels()), 3)).unwrap().remove(0);
    let size = engine.config().image_size;
    let mask = centre_mask(size);
    let draw = |seed| {
        let mut sampler = engine.cone_sampler(&face, &mask, engine.stroke_options(0.8, 4, seed).unwrap()).unwrap();
        for _ in 0..4 {
            pollster::block_on(engine.sampler_round(&mut sampler)).unwrap();
        }
        assert!(sampler.blocks_per_round() < 2 * sampler.blocks_total());
        pollster::block_on(engine.sampled(&sampler)).unwrap()
    };
    let out = draw(1);
    assert_inpainted(&face.x01, &out, &mask, "native");
    assert_eq!(out, draw(1), "the same seed draws the same completion");
    assert_ne!(out, draw(2), "another seed draws another completion");
}

#[test]
fn a_weight_file_of_another_kind_is_refused() {
    let err =
        Engine::load(b"not a weight file".to_vec(), "junk.rgflow", Device::flex(), BackendKind::Cpu).err().unwrap();
    assert!(err.to_string().contains("junk.rgflow"), "{err}");
    let truncated = WEIGHTS[..WEIGHTS.len() / 2].to_vec();
    assert!(Engine::load(truncated, "half.rgflow", Device::flex(), BackendKind::Cpu).is_err());
}
