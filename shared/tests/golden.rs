//! The model reproduces the authors' PyTorch code: every `NAME.safetensors` +
//! `NAME.json` pair in `tests/golden/` (the vectors shipped with the crate)
//! and in `$RGFLOW_GOLDEN_DIR` when it is set (others you made with their
//! code) is loaded and checked in f32, on every enabled backend.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use rgflow::decoder::{self, CpuDecoder};
use rgflow::import::{ReferenceConfig, StateDict, load_reference};

const TOLERANCE: f64 = 1e-4;

/// The golden folders: the crate's own, then `$RGFLOW_GOLDEN_DIR`'s.
fn golden_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")];
    dirs.extend(std::env::var_os("RGFLOW_GOLDEN_DIR").map(PathBuf::from));
    dirs
}

/// `(json, safetensors)` pairs in the golden folder; panics if there are none.
fn golden_cases_in(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("golden dir {}: {e}", dir.display()));
    let mut cases: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|json| {
            let st = json.with_extension("safetensors");
            st.exists().then_some((json, st))
        })
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no NAME.json + NAME.safetensors pairs in {}", dir.display());
    cases
}

/// ‖ours − theirs‖ / ‖theirs‖.
fn rel_err(ours: &[f32], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len(), "length mismatch");
    let diff: f64 = ours.iter().zip(theirs).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
    let norm: f64 = theirs.iter().map(|b| b * b).sum();
    (diff / norm.max(1e-300)).sqrt()
}

fn tensor4(state: &StateDict, name: &str, device: &Device) -> Tensor<4> {
    let t = state.get(name).unwrap_or_else(|| panic!("golden file lacks `{name}`"));
    let shape: [usize; 4] = t.shape.clone().try_into().expect("4-d tensor");
    Tensor::from_data(TensorData::new(t.to_f32(), shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn check(case: &str, what: &str, ours: &[f32], state: &StateDict, name: &str) {
    let theirs = &state.get(name).unwrap_or_else(|| panic!("{case}: lacks `{name}`")).values;
    let err = rel_err(ours, theirs);
    assert!(err <= TOLERANCE, "{case}: {what} relative error {err:e} > {TOLERANCE:e}");
    eprintln!("{case}: {what:<12} rel err {err:.2e}");
}

fn run_golden(device: &Device) {
    for (json, st) in golden_dirs().iter().flat_map(|d| golden_cases_in(d)) {
        let case = json.file_stem().unwrap().to_string_lossy().to_string();
        let reference = ReferenceConfig::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let config = reference.to_config().unwrap();
        let state = StateDict::read(&st).unwrap();
        let flow = load_reference(&state, &config, device).unwrap_or_else(|e| panic!("{case}: {e}"));

        // Gather indices of every sub-layer.
        for (n, sub) in flow.lattice().sublayers.iter().enumerate() {
            for (axis, ours) in [("i", &sub.rows), ("j", &sub.cols)] {
                let name = format!("test.index_{axis}.{n}");
                let theirs = state.get(&name).unwrap_or_else(|| panic!("{case}: lacks `{name}`"));
                assert_eq!(theirs.shape, vec![sub.num_blocks, config.kernel_size.pow(2)], "{case}: {name} shape");
                let theirs: Vec<usize> = theirs.values.iter().map(|&v| v as usize).collect();
                assert_eq!(&theirs, ours, "{case}: {name}");
            }
        }

        let x_logit = tensor4(&state, "test.x_logit", device);
        let (z, ldj) = flow.forward(x_logit.clone());
        check(&case, "z", &values(z), &state, "test.z");
        check(&case, "ldj", &values(ldj), &state, "test.ldj");
        check(&case, "log_prob", &values(flow.log_prob(x_logit)), &state, "test.log_prob");

        let x01 = tensor4(&state, "test.x01", device);
        let (_, ldj_logit) = rgflow::preprocess::logit_transform(x01.clone(), config.logit_constraint);
        check(&case, "ldj_logit", &values(ldj_logit), &state, "test.ldj_logit");
        check(&case, "bpd", &values(flow.bits_per_dim(x01)), &state, "test.bpd");

        let (x, inv_ldj) = flow.inverse(tensor4(&state, "test.inverse_z", device));
        check(&case, "inverse_x", &values(x), &state, "test.inverse_x");
        check(&case, "inverse_ldj", &values(inv_ldj), &state, "test.inverse_ldj");

        // The packed CPU decoder's inverse, in f32.
        let decoder = CpuDecoder::new(&flow, decoder::ProductPrecision::F32);
        let x = decoder.inverse(&values(tensor4(&state, "test.inverse_z", device)));
        check(&case, "decoder x", &x, &state, "test.inverse_x");

        // The fused GPU decoder's, where the device is a GPU one.
        #[cfg(feature = "wgpu")]
        if let Some(gpu) = rgflow::GpuDecoder::for_device(&flow, device).unwrap() {
            let x = gpu.inverse(&values(tensor4(&state, "test.inverse_z", device))).unwrap();
            check(&case, "GPU decoder x", &x, &state, "test.inverse_x");
        }
    }
}

#[test]
fn golden_flex() {
    run_golden(&Device::flex());
}

#[cfg(feature = "ndarray")]
#[test]
#[allow(deprecated)] // kept to compare with the CPU backend burn deprecated
fn golden_ndarray() {
    run_golden(&Device::ndarray());
}

#[cfg(feature = "wgpu")]
#[test]
fn golden_wgpu() {
    run_golden(&Device::wgpu(Default::default()));
}

#[test]
#[should_panic(expected = "no NAME.json + NAME.safetensors pairs")]
fn empty_golden_dir_is_an_error() {
    let empty = std::env::temp_dir().join(format!("rgflow-empty-golden-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("lonely.json"), "{}").unwrap();
    golden_cases_in(&empty);
}

/// The authors' own files (`tests/golden/authors/`, written by its `make.py`
/// with torch from the golden state dict): their training checkpoint
/// (`{'flow', 'optimizer'}`, f32, `module.net.` keys) and a bare f64 state
/// dict, sized by their command-line arguments. Both import to the model the
/// safetensors vectors give, and reproduce the authors' outputs.
#[cfg(feature = "pytorch")]
#[test]
fn authors_checkpoints_import() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let device = Device::flex();
    let vectors = StateDict::read(&dir.join("ref_l8_laplace.safetensors")).unwrap();
    let config = ReferenceConfig::read(&dir.join("authors/ref_l8_laplace.args.json")).unwrap().to_config().unwrap();
    let golden_config =
        ReferenceConfig::from_json(&std::fs::read_to_string(dir.join("ref_l8_laplace.json")).unwrap()).unwrap();
    assert_eq!(config, golden_config.to_config().unwrap(), "their arguments give the golden config");
    let expected = load_reference(&vectors, &config, &device).unwrap();
    let x_logit = tensor4(&vectors, "test.x_logit", &device);
    let expected_log_prob = values(expected.log_prob(x_logit.clone()));
    for file in ["ref_l8_laplace.state", "ref_l8_laplace.pth"] {
        let state = StateDict::open(&dir.join("authors").join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(state.keys().all(|k| !k.starts_with("module.")), "{file}: wrapper prefix removed");
        let flow = load_reference(&state, &config, &device).unwrap_or_else(|e| panic!("{file}: {e}"));
        let log_prob = values(flow.log_prob(x_logit.clone()));
        assert_eq!(log_prob, expected_log_prob, "{file}: same weights as the safetensors vectors");
        check(file, "log_prob", &log_prob, &vectors, "test.log_prob");
    }
}

#[cfg(feature = "pytorch")]
#[test]
fn authors_arguments_and_bad_checkpoints_are_named() {
    // Per-level text, their defaults for the rest (kernel 4, RGB, Laplace).
    let reference = ReferenceConfig::from_json(r#"{"L": 32, "nlayers": "4,3,2,1", "nhidden": "128"}"#).unwrap();
    assert_eq!(reference.nlayers, vec![4, 4, 3, 3, 2, 2, 1, 1]);
    assert_eq!(reference.nresblocks, vec![4; 8]);
    assert_eq!(reference.nmlp, vec![2; 8]);
    assert_eq!(reference.nhidden, vec![128; 8]);
    let err = ReferenceConfig::from_json(r#"{"L": 32, "nlayers": "4,3,2"}"#).unwrap_err().to_string();
    assert!(err.contains("nlayers") && err.contains("4 levels"), "{err}");
    let err = ReferenceConfig::from_json(r#"{"L": 32, "subnet": "ar"}"#).unwrap_err().to_string();
    assert!(err.contains("subnet `ar`"), "{err}");

    let bad = std::env::temp_dir().join(format!("rgflow-bad-checkpoint-{}.pth", std::process::id()));
    std::fs::write(&bad, b"PK\x03\x04 not really a zip archive").unwrap();
    let err = StateDict::open(&bad).unwrap_err().to_string();
    std::fs::remove_file(&bad).unwrap();
    assert!(err.contains("not a readable PyTorch checkpoint") && err.contains("rgflow-bad-checkpoint"), "{err}");
}
