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

/// The worker's host, driven with the page's requests as encoded bytes: it
/// answers as the engine does, keeps strokes between requests, and refuses
/// out-of-order or unknown requests with a message.
#[test]
fn the_worker_host_answers_the_page_protocol() {
    use rgflow_web::worker::host::Host;
    use rgflow_web::worker::protocol::{Envelope, Request, Response, decode, encode};

    let mut host = Host::new();
    // Through the bytes the page posts, so the round trip is covered too.
    let mut ask = |request: Request| {
        let bytes = encode(&Envelope { id: 1, body: request });
        let request = decode::<Envelope<Request>>(&bytes, "request").unwrap().body;
        pollster::block_on(host.handle(request)).map_err(|e| e.to_string())
    };
    let early = ask(Request::Load { bytes: WEIGHTS.to_vec(), source: "models/celeba32.rgflow".into() });
    assert!(early.unwrap_err().contains("start it before loading"));
    assert!(ask(Request::Sample { n: 1, temperatures: vec![1.0], seed: 0 }).unwrap_err().contains("no model"));
    assert!(matches!(
        ask(Request::Start { forced: Some(BackendKind::Cpu) }),
        Ok(Response::Started { backend: BackendKind::Cpu, .. })
    ));
    let refused = ask(Request::Load { bytes: b"junk".to_vec(), source: "junk.rgflow".into() }).unwrap_err();
    assert!(refused.contains("junk.rgflow"), "{refused}");
    let Ok(Response::Loaded(info)) =
        ask(Request::Load { bytes: WEIGHTS.to_vec(), source: "models/celeba32.rgflow".into() })
    else {
        panic!("the shipped weights load");
    };
    let engine = engine();
    assert_eq!(serde_json::to_string(engine.config()).unwrap(), info.config_json);
    assert_eq!(info.num_parameters, engine.flow().num_parameters());
    assert_eq!(info.backend, BackendKind::Cpu);
    // The start-up race's timing, made in the worker.
    let Ok(Response::MsPerFace(ms)) = ask(Request::TimeFaces { n: 2 }) else { panic!("time faces") };
    assert!(ms.is_finite() && ms > 0.0, "{ms} ms per face");

    // Sampling equals the engine's own.
    let temps = temperatures(engine.levels());
    let Ok(Response::Faces(faces)) = ask(Request::Sample { n: FACES, temperatures: temps.clone(), seed: SEED }) else {
        panic!("sample");
    };
    assert_eq!(faces, pollster::block_on(engine.sample(FACES, &temps, SEED)).unwrap());
    let bad_level = ask(Request::LevelLatents { face: faces[0].clone(), level: 99 }).unwrap_err();
    assert!(bad_level.contains("not 99"), "{bad_level}");

    // A stroke lives across requests: its rounds equal the engine's sampler's.
    let face = faces[0].clone();
    let mask = centre_mask(engine.config().image_size);
    let start =
        Request::StartStroke { face: face.clone(), unknown: mask.clone(), temperature: 0.8, rounds: 4, seed: 1 };
    let Ok(Response::StrokeStarted(stroke)) = ask(start) else { panic!("stroke") };
    assert!(stroke.blocks_per_round < 2 * stroke.blocks_total);
    let mut image = Vec::new();
    for _ in 0..2 {
        let Ok(Response::Values(values)) = ask(Request::StrokeRounds { stroke: stroke.id, rounds: 2 }) else {
            panic!("rounds")
        };
        image = values;
    }
    let mut sampler = engine.cone_sampler(&face, &mask, engine.stroke_options(0.8, 4, 1).unwrap()).unwrap();
    for _ in 0..4 {
        pollster::block_on(engine.sampler_round(&mut sampler)).unwrap();
    }
    assert_eq!(image, pollster::block_on(engine.sampled(&sampler)).unwrap());
    assert_inpainted(&face.x01, &image, &mask, "worker host");
    assert_eq!(ask(Request::EndStroke { stroke: stroke.id }), Ok(Response::Ended));
    let ended = ask(Request::StrokeRounds { stroke: stroke.id, rounds: 1 }).unwrap_err();
    assert!(ended.contains("has ended"), "{ended}");
}
