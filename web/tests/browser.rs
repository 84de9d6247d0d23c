//! In a real browser (wasm-bindgen-test in headless Chromium): the weights
//! load, a seeded sample equals the native one, inpainting keeps the known
//! pixels — on the CPU backend and on WebGPU. Run by `tests/browser/run.sh`.

#![cfg(target_arch = "wasm32")]

mod common;

use std::cell::RefCell;

use burn::prelude::*;
use common::*;
use rgflow_web::{BackendKind, Engine};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

thread_local! {
    /// WebGPU is initialised once per page; every test reuses it.
    static GPU: RefCell<Option<Device>> = const { RefCell::new(None) };
}

async fn engine(kind: BackendKind) -> Engine {
    let device = match kind {
        BackendKind::Cpu => Device::flex(),
        BackendKind::WebGpu => match GPU.with(|g| g.borrow().clone()) {
            Some(device) => device,
            None => {
                let chosen = rgflow_web::backend::choose(rgflow_web::backend::Preference::Auto).await;
                assert_eq!(chosen.kind, BackendKind::WebGpu, "no WebGPU in this browser: {:?}", chosen.fallback_reason);
                GPU.with(|g| *g.borrow_mut() = Some(chosen.device.clone()));
                chosen.device
            }
        },
    };
    Engine::load(WEIGHTS.to_vec(), "models/celeba32.rgflow", device, kind).expect("the shipped weights load")
}

async fn seeded_sample(kind: BackendKind) {
    let engine = engine(kind).await;
    let (expected, fingerprint) = fixture();
    assert_eq!(fingerprint, weights_fingerprint(WEIGHTS), "fixture made with other weights");
    let faces = engine.sample(FACES, &temperatures(engine.levels()), SEED).await.unwrap();
    let pixels: Vec<f32> = faces.iter().flat_map(|f| f.x01.clone()).collect();
    let diff = max_diff(&pixels, &expected);
    assert!(diff <= TOLERANCE, "{kind:?}: sample differs from the native one by {diff}");
}

async fn inpainting_keeps_known_pixels(kind: BackendKind) {
    let engine = engine(kind).await;
    let face = engine.sample(1, &temperatures(engine.levels()), 3).await.unwrap().remove(0);
    let size = engine.config().image_size;
    let mask = centre_mask(size);
    let mut sampler = engine.cone_sampler(&face, &mask, engine.stroke_options(0.8, 3, 1).unwrap()).unwrap();
    for _ in 0..3 {
        engine.sampler_round(&mut sampler).await.unwrap();
    }
    let out = engine.sampled(&sampler).await.unwrap();
    assert_inpainted(&face.x01, &out, &mask, &format!("{kind:?}"));
}

#[wasm_bindgen_test]
async fn weights_load_on_cpu() {
    let engine = engine(BackendKind::Cpu).await;
    assert_eq!(engine.config().image_size, 32);
    assert!(Engine::load(WEIGHTS[..1000].to_vec(), "cut.rgflow", Device::flex(), BackendKind::Cpu).is_err());
}

#[wasm_bindgen_test]
async fn seeded_sample_equals_native_on_cpu() {
    seeded_sample(BackendKind::Cpu).await;
}

#[wasm_bindgen_test]
async fn seeded_sample_equals_native_on_webgpu() {
    seeded_sample(BackendKind::WebGpu).await;
}

#[wasm_bindgen_test]
async fn inpainting_keeps_known_pixels_on_cpu() {
    inpainting_keeps_known_pixels(BackendKind::Cpu).await;
}

#[wasm_bindgen_test]
async fn inpainting_keeps_known_pixels_on_webgpu() {
    inpainting_keeps_known_pixels(BackendKind::WebGpu).await;
}
