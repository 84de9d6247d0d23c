//! Loading the authors' PyTorch checkpoints so their models run here.
//!
//! A checkpoint is read from a safetensors file or, with the `pytorch`
//! feature, from what `torch.save` wrote — their training script's
//! `{epoch}.state` files (`{'flow': state_dict, 'optimizer': …}`) or a bare
//! state dict — whatever the file is named ([`StateDict::open`] looks at its
//! first bytes). Their key names are kept:
//! `layers.{k}.{s,t}_layers.{l}.res_blocks.{r}.{j}.…` where even `j` is a
//! Swish (`scale` = β) and odd `j` a weight-normed Linear (`weight_v [out,
//! in]`, `weight_g [out, 1]`, `bias`), then `layers.{k}.{s,t}_layers.{l}.scale.scale`,
//! the checkerboard masks, and `prior.scale`. The `module.net.` prefix that
//! their multi-GPU wrapper adds is removed, as their loader does. Debug
//! buffers (`saved_mean`, `saved_var`) and test vectors (`test.*`) are ignored.
//!
//! The model's sizes come from a [`ReferenceConfig`]: their command-line
//! arguments as JSON, per-level strings (`"nlayers": "8,6,4,2"`) or
//! per-sub-layer lists, their defaults for what is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::config::{PriorKind, RgFlowConfig};
use crate::coupling::checkerboard_masks;
use crate::error::{Error, Result};
use crate::flow::RgFlow;

/// One tensor of a state dict, widened to `f64` (integers are exact up to 2⁵³).
#[derive(Debug, Clone)]
pub struct RefTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f64>,
}

impl RefTensor {
    /// Values as `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
}

/// The element types a checkpoint's tensors are read from.
#[derive(Debug, Clone, Copy)]
enum Element {
    F64,
    F32,
    F16,
    Bf16,
    I64,
    I32,
}

impl Element {
    /// Bytes per value.
    fn size(self) -> usize {
        match self {
            Element::F64 | Element::I64 => 8,
            Element::F32 | Element::I32 => 4,
            Element::F16 | Element::Bf16 => 2,
        }
    }

    /// Little-endian `bytes` of this type, widened to `f64`.
    fn widen_le(self, bytes: &[u8]) -> Vec<f64> {
        let values = bytes.chunks_exact(self.size());
        match self {
            Element::F64 => values.map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
            Element::F32 => values.map(|b| f32::from_le_bytes(b.try_into().unwrap()).into()).collect(),
            Element::F16 => values.map(|b| burn::tensor::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
            Element::Bf16 => values.map(|b| burn::tensor::bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
            Element::I64 => values.map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
            Element::I32 => values.map(|b| i32::from_le_bytes(b.try_into().unwrap()).into()).collect(),
        }
    }
}

/// A state dict read from a safetensors file.
#[derive(Debug, Clone)]
pub struct StateDict {
    source: PathBuf,
    tensors: BTreeMap<String, RefTensor>,
}

impl StateDict {
    /// Reads a checkpoint in either format: safetensors, or a `torch.save`
    /// file (needs the `pytorch` feature), told apart by the first bytes.
    pub fn open(path: &Path) -> Result<Self> {
        use std::io::Read;
        let io = |source| Error::Io { path: path.into(), source };
        let mut head = Vec::with_capacity(9);
        std::fs::File::open(path).and_then(|file| file.take(9).read_to_end(&mut head)).map_err(io)?;
        // safetensors: an 8-byte little-endian header length, then the JSON header.
        if head.len() == 9 && head[8] == b'{' { Self::read(path) } else { Self::read_pytorch(path) }
    }

    /// Reads a `torch.save` file: the authors' training checkpoint (the
    /// weights under its `flow` key) or a bare state dict.
    #[cfg(feature = "pytorch")]
    pub fn read_pytorch(path: &Path) -> Result<Self> {
        use pytorch_reader::{DType, PytorchError, PytorchReader};
        let fail = |e: PytorchError| Error::weights(path, format!("not a readable PyTorch checkpoint: {e}"));
        let reader = match PytorchReader::with_top_level_key(path, "flow") {
            Ok(reader) => reader,
            Err(PytorchError::KeyNotFound(_)) => PytorchReader::new(path).map_err(fail)?,
            Err(e) => return Err(fail(e)),
        };
        let mut tensors = BTreeMap::new();
        for (name, tensor) in reader.into_tensors() {
            let element = match tensor.dtype() {
                DType::F64 => Element::F64,
                DType::F32 => Element::F32,
                DType::F16 => Element::F16,
                DType::BF16 => Element::Bf16,
                DType::I64 => Element::I64,
                DType::I32 => Element::I32,
                other => {
                    return Err(Error::weights(path, format!("tensor `{name}` has unsupported dtype {other:?}")));
                }
            };
            let mut bytes = tensor.read().map_err(|e| Error::weights(path, e.to_string()))?;
            // The reader hands out native-endian bytes.
            if cfg!(target_endian = "big") {
                bytes.chunks_exact_mut(element.size()).for_each(<[u8]>::reverse);
            }
            let values = element.widen_le(&bytes);
            // Their multi-GPU wrapper saves every key under `module.net.`.
            let name = name.strip_prefix("module.net.").map(str::to_string).unwrap_or(name);
            tensors.insert(name, RefTensor { shape: tensor.shape().to_vec(), values });
        }
        Ok(Self { source: path.into(), tensors })
    }

    /// Without the `pytorch` feature a `torch.save` file is refused, saying why.
    #[cfg(not(feature = "pytorch"))]
    pub fn read_pytorch(path: &Path) -> Result<Self> {
        Err(Error::weights(
            path,
            "not a safetensors file; reading PyTorch checkpoints needs rgflow's `pytorch` feature",
        ))
    }

    /// Reads a safetensors file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses safetensors bytes; `source` names them in errors.
    pub fn from_bytes(bytes: &[u8], source: impl Into<PathBuf>) -> Result<Self> {
        let source = source.into();
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::weights(&source, format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let element = match view.dtype() {
                Dtype::F64 => Element::F64,
                Dtype::F32 => Element::F32,
                Dtype::F16 => Element::F16,
                Dtype::BF16 => Element::Bf16,
                Dtype::I64 => Element::I64,
                Dtype::I32 => Element::I32,
                other => {
                    return Err(Error::weights(&source, format!("tensor `{name}` has unsupported dtype {other:?}")));
                }
            };
            tensors.insert(name, RefTensor { shape: view.shape().to_vec(), values: element.widen_le(view.data()) });
        }
        Ok(Self { source, tensors })
    }

    /// The tensor called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&RefTensor> {
        self.tensors.get(name)
    }

    /// All tensor names.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensor `name`, checked to have `shape`.
    fn expect(&self, name: &str, shape: &[usize]) -> Result<&RefTensor> {
        let t = self.get(name).ok_or_else(|| Error::weights(&self.source, format!("missing tensor `{name}`")))?;
        if t.shape != shape {
            return Err(Error::weights(
                &self.source,
                format!("tensor `{name}` has shape {:?}, the config needs {shape:?}", t.shape),
            ));
        }
        Ok(t)
    }
}

/// A size knob as the authors' arguments give it: per level as text
/// (`"8,6,4,2"`, or `"4"` for all, their `--nlayers` strings), one number for
/// all, or one value per sub-layer.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Sizes {
    PerSubLayer(Vec<usize>),
    All(usize),
    PerLevel(String),
}

impl Sizes {
    fn resolve(self, name: &str, levels: usize) -> Result<Vec<usize>> {
        match self {
            Sizes::PerSubLayer(list) => Ok(list),
            Sizes::All(n) => Ok(vec![n; 2 * levels]),
            Sizes::PerLevel(text) => crate::config::parse_level_spec(name, &text, levels),
        }
    }
}

/// The authors' arguments as read from JSON, before the sizes are resolved.
/// What is left out takes their `args.py` default ([`Default`]); other keys
/// (`lr`, `batch_size`, …) are ignored.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct ReferenceArgs {
    #[serde(rename = "L")]
    image_size: usize,
    #[serde(alias = "nchannels")]
    channels: usize,
    kernel_size: usize,
    prior: String,
    subnet: String,
    prior_scale: Option<f64>,
    depth: Option<usize>,
    #[serde(alias = "nlayers_list")]
    nlayers: Sizes,
    #[serde(alias = "nresblocks_list")]
    nresblocks: Sizes,
    #[serde(alias = "nmlp_list")]
    nmlp: Sizes,
    #[serde(alias = "nhidden_list")]
    nhidden: Sizes,
    logit_constraint: Option<f64>,
}

impl Default for ReferenceArgs {
    /// The defaults of the authors' `args.py`.
    fn default() -> Self {
        let per_level = |text: &str| Sizes::PerLevel(text.into());
        Self {
            image_size: 32,
            channels: 3,
            kernel_size: 4,
            prior: "laplace".into(),
            subnet: "rnvp".into(),
            prior_scale: None,
            depth: None,
            nlayers: per_level("8,6,4,2"),
            nresblocks: per_level("4"),
            nmlp: per_level("2"),
            nhidden: per_level("512"),
            logit_constraint: None,
        }
    }
}

/// The authors' configuration: their arguments as JSON (as written next to
/// their test vectors, or their `args.py` values), sizes resolved per sub-layer.
#[derive(Debug, Clone)]
pub struct ReferenceConfig {
    /// Image edge `L`.
    pub image_size: usize,
    /// Channels.
    pub channels: usize,
    /// Block edge.
    pub kernel_size: usize,
    /// `"laplace"` or `"gaussian"`.
    pub prior: String,
    /// Scale of the prior buffer (`1/√2` for Laplace at `T = 1`).
    pub prior_scale: Option<f64>,
    /// Number of sub-layers, when the file gives it.
    pub depth: Option<usize>,
    /// Couplings per sub-layer.
    pub nlayers: Vec<usize>,
    /// Residual blocks per s/t network, per sub-layer.
    pub nresblocks: Vec<usize>,
    /// Hidden layers per residual block, per sub-layer.
    pub nmlp: Vec<usize>,
    /// Hidden width, per sub-layer.
    pub nhidden: Vec<usize>,
    /// Logit constraint (0.9 if absent).
    pub logit_constraint: Option<f64>,
}

impl ReferenceConfig {
    /// Parses the JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let args: ReferenceArgs =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("reference config JSON: {e}")))?;
        if args.subnet != "rnvp" {
            return Err(Error::Config(format!(
                "subnet `{}`: only the authors' RealNVP couplings (`rnvp`) are implemented",
                args.subnet
            )));
        }
        crate::config::check_geometry(args.image_size, args.channels, args.kernel_size)?;
        let levels = crate::config::num_levels(args.image_size, args.kernel_size);
        Ok(Self {
            image_size: args.image_size,
            channels: args.channels,
            kernel_size: args.kernel_size,
            prior: args.prior,
            prior_scale: args.prior_scale,
            depth: args.depth,
            nlayers: args.nlayers.resolve("nlayers", levels)?,
            nresblocks: args.nresblocks.resolve("nresblocks", levels)?,
            nmlp: args.nmlp.resolve("nmlp", levels)?,
            nhidden: args.nhidden.resolve("nhidden", levels)?,
            logit_constraint: args.logit_constraint,
        })
    }

    /// Reads and parses a JSON file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config(reason) => Error::Config(format!("{}: {reason}", path.display())),
            other => other,
        })
    }

    /// Our config for the same model.
    pub fn to_config(&self) -> Result<RgFlowConfig> {
        let prior = match self.prior.to_ascii_lowercase().as_str() {
            "laplace" => PriorKind::Laplace,
            "gaussian" => PriorKind::Gaussian,
            other => return Err(Error::Config(format!("unknown prior `{other}` (laplace or gaussian)"))),
        };
        let config = RgFlowConfig::new(
            self.image_size,
            self.channels,
            self.nlayers.clone(),
            self.nresblocks.clone(),
            self.nmlp.clone(),
            self.nhidden.clone(),
        )
        .with_kernel_size(self.kernel_size)
        .with_prior(prior)
        .with_logit_constraint(self.logit_constraint.unwrap_or(0.9));
        config.validate()?;
        if let Some(depth) = self.depth
            && depth != config.depth()
        {
            return Err(Error::Config(format!("depth {depth} does not match L and kernel_size ({})", config.depth())));
        }
        Ok(config)
    }
}

/// Builds our model from the authors' state dict.
///
/// Every parameter the config needs must be present with the right shape; a
/// key this model would not use is an error too, so a file of another model
/// is never half-loaded.
pub fn load_reference(state: &StateDict, config: &RgFlowConfig, device: &Device) -> Result<RgFlow> {
    config.validate()?;
    let mut used = BTreeSet::new();
    let mut take = |name: String, shape: &[usize]| -> Result<Vec<f32>> {
        let t = state.expect(&name, shape)?;
        used.insert(name);
        Ok(t.to_f32())
    };
    let tensor1 = |v: Vec<f32>| Tensor::<1>::from_floats(v.as_slice(), device);

    let dim = config.block_dim();
    let (left, right) = checkerboard_masks(config.channels, config.kernel_size);
    let mut layers = Vec::with_capacity(config.depth());
    for k in 0..config.depth() {
        let kk = config.kernel_size;
        for (mask_name, ours) in [("mask_left", &left), ("mask_right", &right)] {
            let theirs = take(format!("layers.{k}.{mask_name}"), &[config.channels, kk, kk])?;
            if &theirs != ours {
                return Err(Error::weights(
                    &state.source,
                    format!("layers.{k}.{mask_name} is not the checkerboard mask"),
                ));
            }
        }
        // The structure comes from our config (`StackLayout::init`); every
        // parameter is then replaced by theirs.
        let layout = config.stack_layout(k);
        let mut stack = layout.init(device);
        for (kind, nets) in [("s", &mut stack.s_layers), ("t", &mut stack.t_layers)] {
            for (l, net) in nets.iter_mut().enumerate() {
                let prefix = format!("layers.{k}.{kind}_layers.{l}");
                for (r, block) in net.res_blocks.iter_mut().enumerate() {
                    let p = format!("{prefix}.res_blocks.{r}");
                    for (j, (swish, linear)) in block.activations.iter_mut().zip(&mut block.linears).enumerate() {
                        let (d_in, d_out) = layout.widths(j);
                        swish.beta = Param::from_tensor(tensor1(take(format!("{p}.{}.scale", 2 * j), &[d_in])?));
                        let lin = format!("{p}.{}", 2 * j + 1);
                        let v = take(format!("{lin}.weight_v"), &[d_out, d_in])?;
                        let g = take(format!("{lin}.weight_g"), &[d_out, 1])?;
                        let b = take(format!("{lin}.bias"), &[d_out])?;
                        // [out, in] -> [in, out]
                        let v = Tensor::<2>::from_data(TensorData::new(v, [d_out, d_in]), device).transpose();
                        linear.weight_v = Param::from_tensor(v);
                        linear.weight_g = Param::from_tensor(tensor1(g));
                        linear.bias = Param::from_tensor(tensor1(b));
                    }
                }
                net.scale.scale = Param::from_tensor(tensor1(take(format!("{prefix}.scale.scale"), &[dim])?));
            }
        }
        layers.push(stack);
    }

    if let Some(scale) = state.get("prior.scale") {
        let expected = crate::prior::Prior::new(config.prior).scale(1.0);
        if scale.values.len() != 1 || (scale.values[0] - expected).abs() > 1e-6 {
            return Err(Error::weights(
                &state.source,
                format!("prior.scale is {:?}, a {:?} prior at T = 1 has {expected}", scale.values, config.prior),
            ));
        }
        used.insert("prior.scale".into());
    }
    let unexpected: Vec<&str> = state
        .keys()
        .filter(|k| {
            !used.contains(*k) && !k.starts_with("test.") && !k.ends_with(".saved_mean") && !k.ends_with(".saved_var")
        })
        .collect();
    if !unexpected.is_empty() {
        return Err(Error::weights(
            &state.source,
            format!("{} tensors this config does not use, e.g. `{}`", unexpected.len(), unexpected[0]),
        ));
    }
    Ok(RgFlow::from_layers(config, layers, device))
}

#[cfg(test)]
mod tests {
    use super::StateDict;

    /// A safetensors file by hand: its header's length, the JSON header,
    /// the tensors' bytes.
    fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn half_precision_safetensors_are_widened() {
        let header = r#"{"half":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"brain":{"dtype":"BF16","shape":[1,1],"data_offsets":[4,6]}}"#;
        let mut data = Vec::new();
        for x in [1.5f32, -2.0] {
            data.extend_from_slice(&burn::tensor::f16::from_f32(x).to_le_bytes());
        }
        data.extend_from_slice(&burn::tensor::bf16::from_f32(3.0).to_le_bytes());
        let dict = StateDict::from_bytes(&safetensors(header, &data), "half.safetensors").unwrap();
        assert_eq!(dict.get("half").unwrap().values, vec![1.5, -2.0]);
        let brain = dict.get("brain").unwrap();
        assert_eq!((brain.shape.as_slice(), brain.values.as_slice()), ([1, 1].as_slice(), [3.0].as_slice()));
    }

    #[test]
    fn unsupported_dtypes_are_named() {
        let header = r#"{"mask":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
        let err = StateDict::from_bytes(&safetensors(header, &[0, 1]), "mask.safetensors").unwrap_err().to_string();
        assert!(err.contains("`mask`") && err.contains("U8") && err.contains("mask.safetensors"), "{err}");
    }
}
