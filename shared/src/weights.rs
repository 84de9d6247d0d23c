//! Our own weight files: a burnpack container whose metadata carries the
//! format name, format version and the model config, so a file is validated
//! before any tensor is loaded and always rebuilds the model it came from.

use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::store::burn_pack::{Bytes, Reader};
use burn::store::{BurnpackStore, FloatCastAdapter, HalfPrecisionAdapter, ModuleSnapshot};
use burn::tensor::{DType, FloatDType};

use crate::config::RgFlowConfig;
use crate::error::{Error, Result};
use crate::flow::RgFlow;

/// Metadata key and value that mark an rgflow weight file.
pub const FORMAT_KEY: &str = "rgflow.format";
/// Value of [`FORMAT_KEY`].
pub const FORMAT_NAME: &str = "rgflow-weights";
/// Metadata key of the format version.
pub const VERSION_KEY: &str = "rgflow.format_version";
/// The version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Metadata key of the config JSON.
pub const CONFIG_KEY: &str = "rgflow.config";

/// Storage precision of a weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoragePrecision {
    /// 32-bit floats (training checkpoints).
    F32,
    /// 16-bit floats (half the size; for the web demo).
    F16,
}

/// Converts our parameter-holding modules between f32 and f16 (burn's adapter
/// only knows its own layer types by default).
fn half_precision() -> HalfPrecisionAdapter {
    HalfPrecisionAdapter::new().with_module("WeightNormLinear").with_module("Swish").with_module("Scale")
}

struct ToF32;

impl ModuleMapper for ToF32 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| if t.dtype() == DType::F32 { t } else { t.cast(FloatDType::F32) })
    }
}

/// Serialises the flow's weights and config.
pub fn to_bytes(flow: &RgFlow, precision: StoragePrecision) -> Result<Vec<u8>> {
    let config = serde_json::to_string(flow.config()).expect("config serialises");
    let mut store = BurnpackStore::from_bytes(None)
        .metadata(FORMAT_KEY, FORMAT_NAME)
        .metadata(VERSION_KEY, FORMAT_VERSION.to_string())
        .metadata(CONFIG_KEY, config);
    if precision == StoragePrecision::F16 {
        store = store.with_to_adapter(half_precision());
    }
    flow.save_into(&mut store).map_err(|e| Error::weights("<memory>", e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| Error::weights("<memory>", e.to_string()))?;
    Ok(bytes.to_vec())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// flushed, then renamed over the target, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source| Error::Io { path: path.into(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io(std::io::Error::other("no file name")))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    // A failed write (a full disk) leaves the previous file as it was and no
    // temporary file behind.
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    // The rename is durable only once the folder's entry is on disk too.
    #[cfg(unix)]
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Saves the flow (f32) atomically.
pub fn save(flow: &RgFlow, path: &Path, precision: StoragePrecision) -> Result<()> {
    write_atomic(path, &to_bytes(flow, precision)?)
}

/// Reads a weight file's header (its metadata and tensor table; the tensors'
/// data stays where it is).
fn open(bytes: Vec<u8>, source: &str) -> Result<Reader> {
    Reader::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| Error::weights(source, format!("not an rgflow weight file ({e})")))
}

fn config_from_metadata(meta: &std::collections::BTreeMap<String, String>, source: &str) -> Result<RgFlowConfig> {
    if meta.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT_NAME) {
        return Err(Error::weights(source, "a burnpack file, but not rgflow weights (no rgflow format tag)"));
    }
    let version = meta.get(VERSION_KEY).and_then(|v| v.parse::<u32>().ok());
    if version != Some(FORMAT_VERSION) {
        return Err(Error::weights(
            source,
            format!("format version {version:?}, this build reads version {FORMAT_VERSION}"),
        ));
    }
    let text = meta.get(CONFIG_KEY).ok_or_else(|| Error::weights(source, "no model config inside"))?;
    let config: RgFlowConfig =
        serde_json::from_str(text).map_err(|e| Error::weights(source, format!("bad config inside: {e}")))?;
    config.validate().map_err(|e| Error::weights(source, e.to_string()))?;
    Ok(config)
}

/// Loads a flow from weight-file bytes; `source` names them in errors.
///
/// The file must carry our format tag and version, and every tensor must
/// match the stored config's model in name and shape, with none left over.
pub fn from_bytes(bytes: Vec<u8>, source: &str, device: &Device) -> Result<RgFlow> {
    let reader = open(bytes, source)?;
    let config = config_from_metadata(reader.metadata(), source)?;
    load_into(config, reader, source, device)
}

/// Loads a file's tensors into a freshly built model of `config` (which must
/// be the file's own config; see [`config_from_metadata`]). The header is
/// read once, for the config and the tensors both.
fn load_into(config: RgFlowConfig, reader: Reader, source: &str, device: &Device) -> Result<RgFlow> {
    let misfit = |what: String| Error::weights(source, format!("tensors do not fit the stored config: {what}"));
    // Built with lazy parameters: nothing is drawn, filled or run on the
    // device before the file's tensors replace them.
    let mut flow = config.init_lazy(device);
    let tensors = reader.into_tensors().map_err(|e| misfit(e.to_string()))?;
    // f16 files become f32 on the host as they load: a device cast would need
    // f16 shaders, which many WebGPU adapters lack.
    let result = flow.apply(tensors, None, Some(Box::new(FloatCastAdapter::to(DType::F32))), false);
    if let Some(error) = result.errors.first() {
        return Err(misfit(error.to_string()));
    }
    // A lazy parameter left unloaded would be drawn at random on first use.
    if let Some((path, _)) = result.missing.first() {
        return Err(misfit(format!("`{path}` is missing")));
    }
    if let Some(path) = result.unused.first() {
        return Err(Error::weights(source, format!("unexpected tensors, e.g. `{path}`")));
    }
    // Anything the adapter did not reach still computes in f32.
    Ok(flow.map(&mut ToF32))
}

/// Loads a flow saved with [`save`].
pub fn load(path: &Path, device: &Device) -> Result<RgFlow> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    from_bytes(bytes, &path.display().to_string(), device)
}

/// Loads weights into a model whose config the caller expects, failing with
/// a clear message when the file holds another model.
pub fn load_expecting(path: &Path, expected: &RgFlowConfig, device: &Device) -> Result<RgFlow> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let source = path.display().to_string();
    let reader = open(bytes, &source)?;
    let config = config_from_metadata(reader.metadata(), &source)?;
    if &config != expected {
        return Err(Error::weights(
            &source,
            format!("holds another model: {}", serde_json::to_string(&config).unwrap_or_default()),
        ));
    }
    load_into(config, reader, &source, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RgFlowConfig;

    fn config(nhidden: &str) -> RgFlowConfig {
        RgFlowConfig::from_level_specs(8, 3, "1", "1", "1", nhidden).unwrap()
    }

    /// A file whose stored config claims a huge model, or 2 channels, is
    /// refused from its config alone, before any model is built.
    #[test]
    fn weight_files_claiming_huge_or_odd_models_are_refused() {
        let device = Device::flex();
        let flow = config("8").init(&device);
        let claims = [
            ("channels", RgFlowConfig { channels: 2, ..config("8") }),
            ("nhidden", RgFlowConfig { nhidden: vec![1 << 30; 4], ..config("8") }),
            ("image size", RgFlowConfig { image_size: 1 << 20, ..config("8") }),
        ];
        for (what, claim) in claims {
            let mut store = BurnpackStore::from_bytes(None)
                .metadata(FORMAT_KEY, FORMAT_NAME)
                .metadata(VERSION_KEY, FORMAT_VERSION.to_string())
                .metadata(CONFIG_KEY, serde_json::to_string(&claim).unwrap());
            flow.save_into(&mut store).unwrap();
            let bytes = store.get_bytes().unwrap().to_vec();
            let err = from_bytes(bytes, "crafted.rgflow", &device).unwrap_err().to_string();
            assert!(err.contains("crafted.rgflow") && err.contains(what), "{what}: {err}");
        }
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("rgflow-write-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("model.rgflow");
        write_atomic(&good, b"first").unwrap();
        write_atomic(&good, b"second").unwrap();
        assert_eq!(std::fs::read(&good).unwrap(), b"second");
        // The rename cannot replace a non-empty folder: the write fails
        // after the temporary file was written, which must not stay behind.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(write_atomic(&blocked, b"never").is_err());
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "temporary files left: {names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn weights_round_trip_and_foreign_files_are_refused() {
        let device = Device::flex();
        let flow = crate::testing::jitter_parameters(config("8").init(&device), 0.1, 7);
        let x = crate::testing::host_uniform([2, 3, 8, 8], -1.7, 1.7, 5, &device);
        let lp = flow.log_prob(x.clone()).into_data().try_to_vec::<f32>().unwrap();

        let bytes = to_bytes(&flow, StoragePrecision::F32).unwrap();
        let back = from_bytes(bytes.clone(), "mem", &device).unwrap();
        assert_eq!(back.log_prob(x.clone()).into_data().try_to_vec::<f32>().unwrap(), lp);
        let half_bytes = to_bytes(&flow, StoragePrecision::F16).unwrap();
        // Tensor bytes halve (names and metadata do not; a wider model shows it).
        let wide = config("64").init(&device);
        let (w32, w16) = (
            to_bytes(&wide, StoragePrecision::F32).unwrap().len(),
            to_bytes(&wide, StoragePrecision::F16).unwrap().len(),
        );
        assert!(w16 * 10 < w32 * 6, "f16 file is {w16} bytes, f32 {w32}");
        let half = from_bytes(half_bytes, "mem", &device).unwrap();
        let lp16 = half.log_prob(x).into_data().try_to_vec::<f32>().unwrap();
        assert!(lp.iter().zip(&lp16).all(|(a, b)| ((a - b) / a).abs() < 1e-2), "{lp:?} vs {lp16:?}");
        assert_ne!(lp, lp16, "f16 weights should round");

        let dir = std::env::temp_dir().join(format!("rgflow-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.rgflow");
        save(&flow, &path, StoragePrecision::F32).unwrap();
        let err = load_expecting(&path, &config("16"), &device).unwrap_err().to_string();
        assert!(err.contains("another model"), "{err}");

        // Not burnpack at all, cut short, or burnpack without our tag.
        let err = from_bytes(b"hello".to_vec(), "x", &device).unwrap_err().to_string();
        assert!(err.contains("not an rgflow weight file"), "{err}");
        let err = from_bytes(bytes[..bytes.len() / 2].to_vec(), "x", &device).unwrap_err().to_string();
        assert!(err.contains("weight file x"), "{err}");
        let mut plain = BurnpackStore::from_bytes(None);
        flow.save_into(&mut plain).unwrap();
        let err = from_bytes(plain.get_bytes().unwrap().to_vec(), "x", &device).unwrap_err().to_string();
        assert!(err.contains("not rgflow weights"), "{err}");
        // A future format version.
        let mut newer = BurnpackStore::from_bytes(None)
            .metadata(FORMAT_KEY, FORMAT_NAME)
            .metadata(VERSION_KEY, "99")
            .metadata(CONFIG_KEY, serde_json::to_string(flow.config()).unwrap());
        flow.save_into(&mut newer).unwrap();
        let err = from_bytes(newer.get_bytes().unwrap().to_vec(), "x", &device).unwrap_err().to_string();
        assert!(err.contains("version"), "{err}");
        // Tensors of another shape under a config that claims this one.
        let other = config("16").init(&device);
        let mut lying = BurnpackStore::from_bytes(None)
            .metadata(FORMAT_KEY, FORMAT_NAME)
            .metadata(VERSION_KEY, FORMAT_VERSION.to_string())
            .metadata(CONFIG_KEY, serde_json::to_string(flow.config()).unwrap());
        other.save_into(&mut lying).unwrap();
        let err = from_bytes(lying.get_bytes().unwrap().to_vec(), "x", &device).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        // A file that lacks tensors: the model is built with lazy parameters,
        // so a missing one must fail the load rather than be drawn at random.
        let mut partial = BurnpackStore::from_bytes(None)
            .with_regex(r"^layers\.0\.")
            .metadata(FORMAT_KEY, FORMAT_NAME)
            .metadata(VERSION_KEY, FORMAT_VERSION.to_string())
            .metadata(CONFIG_KEY, serde_json::to_string(flow.config()).unwrap());
        flow.save_into(&mut partial).unwrap();
        let err = from_bytes(partial.get_bytes().unwrap().to_vec(), "x", &device).unwrap_err().to_string();
        assert!(err.contains("do not fit") && err.contains("layers.1"), "{err}");
    }

    /// Counts a module's parameters that are made and those still lazy.
    #[derive(Default)]
    struct Made {
        made: usize,
        lazy: usize,
    }

    impl burn::module::ModuleVisitor for Made {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if param.is_initialized() { self.made += 1 } else { self.lazy += 1 }
        }
    }

    /// Loading draws and fills nothing it then overwrites: the structure
    /// it loads into is lazy, while `init` makes every parameter at once.
    #[test]
    fn a_loaded_model_was_never_initialised_and_a_new_one_is_made_at_once() {
        let device = Device::flex();
        let made = |flow: &RgFlow| {
            let mut count = Made::default();
            flow.visit(&mut count);
            (count.made, count.lazy)
        };
        let flow = config("8").init(&device);
        let (total, lazy) = made(&flow);
        assert!(total > 0 && lazy == 0, "init left {lazy} of {total} parameters lazy");
        let structure = config("8").init_lazy(&device);
        assert_eq!(made(&structure), (0, total));
        // `g = ‖v‖` at start whichever of the two is made first.
        let (v, g) = {
            let linear = &structure.layers[0].s_layers[0].res_blocks[0].linears[0];
            let g = linear.weight_g.val();
            (linear.weight_v.val(), g)
        };
        let norms = v.square().sum_dim(0).sqrt().squeeze_dim::<1>(0);
        norms.into_data().assert_approx_eq::<f32>(&g.into_data(), burn::tensor::Tolerance::rel_abs(1e-6, 1e-6));
        let loaded = from_bytes(to_bytes(&flow, StoragePrecision::F32).unwrap(), "mem", &device).unwrap();
        assert_eq!(made(&loaded), (total, 0));
    }
}
