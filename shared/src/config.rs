//! Model configuration: the same knobs as the authors' `args.py`.

use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::{Device, Tensor};

use crate::error::Error;

type ConfigResult<T> = std::result::Result<T, Error>;
use crate::flow::RgFlow;

/// Which sparse prior the latents follow.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum PriorKind {
    /// Laplace with scale `T/√2` (unit variance at `T = 1`); the paper's choice.
    Laplace,
    /// Gaussian with standard deviation `T`.
    Gaussian,
}

/// RG-Flow hyper-parameters.
///
/// The four per-depth lists hold one entry per *sub-layer* (two per level:
/// decimator, then disentangler), exactly as the authors' `args.*_list`. Build
/// them from the command-line style with [`RgFlowConfig::from_level_specs`]:
/// `"8,6,4,2"` gives one value per level, `"4"` one value for all.
#[derive(Config, Debug, PartialEq)]
pub struct RgFlowConfig {
    /// Edge length `L` of the (square) image; a power of two, at least `kernel_size`.
    pub image_size: usize,
    /// Number of channels `C`.
    pub channels: usize,
    /// Edge length `K` of an RG block (even).
    #[config(default = 4)]
    pub kernel_size: usize,
    /// RealNVP coupling layers per sub-layer.
    pub nlayers: Vec<usize>,
    /// Residual blocks in each s/t network, per sub-layer.
    pub nresblocks: Vec<usize>,
    /// Hidden linear layers in each residual block, per sub-layer.
    pub nmlp: Vec<usize>,
    /// Width of the hidden layers, per sub-layer.
    pub nhidden: Vec<usize>,
    /// Prior of the latents.
    #[config(default = "PriorKind::Laplace")]
    pub prior: PriorKind,
    /// Data are squeezed into `[(1-c)/2, (1+c)/2]` before the logit.
    #[config(default = 0.9)]
    pub logit_constraint: f64,
}

/// Number of levels `log2(L/K) + 1` (not validated).
pub fn num_levels(image_size: usize, kernel_size: usize) -> usize {
    (image_size / kernel_size).trailing_zeros() as usize + 1
}

/// Parses one per-level knob the way the authors do: `"8,6,4,2"` has one value
/// per level (repeated for its two sub-layers), `"4"` one value for every
/// sub-layer. Returns the per-sub-layer list of length `2 * levels`.
pub fn parse_level_spec(name: &str, spec: &str, levels: usize) -> ConfigResult<Vec<usize>> {
    let err = |reason: String| Error::LevelSpec { name: name.to_string(), spec: spec.to_string(), reason };
    let values = spec
        .split(',')
        .map(|v| v.trim().parse::<usize>().map_err(|e| err(format!("`{v}`: {e}"))))
        .collect::<ConfigResult<Vec<_>>>()?;
    match values.len() {
        1 => Ok(vec![values[0]; 2 * levels]),
        n if n == levels => Ok(values.iter().flat_map(|&v| [v, v]).collect()),
        n => Err(err(format!("{n} values, but the model has {levels} levels (give 1 or {levels})"))),
    }
}

impl RgFlowConfig {
    /// A config from command-line style per-level specs (see [`parse_level_spec`]).
    pub fn from_level_specs(
        image_size: usize,
        channels: usize,
        nlayers: &str,
        nresblocks: &str,
        nmlp: &str,
        nhidden: &str,
    ) -> ConfigResult<Self> {
        Self::from_level_specs_with_kernel(image_size, channels, 4, nlayers, nresblocks, nmlp, nhidden)
    }

    /// [`Self::from_level_specs`] with an explicit block size `K`.
    pub fn from_level_specs_with_kernel(
        image_size: usize,
        channels: usize,
        kernel_size: usize,
        nlayers: &str,
        nresblocks: &str,
        nmlp: &str,
        nhidden: &str,
    ) -> ConfigResult<Self> {
        check_geometry(image_size, channels, kernel_size)?;
        let levels = num_levels(image_size, kernel_size);
        let config = Self::new(
            image_size,
            channels,
            parse_level_spec("nlayers", nlayers, levels)?,
            parse_level_spec("nresblocks", nresblocks, levels)?,
            parse_level_spec("nmlp", nmlp, levels)?,
            parse_level_spec("nhidden", nhidden, levels)?,
        )
        .with_kernel_size(kernel_size);
        config.validate()?;
        Ok(config)
    }

    /// Number of levels, `log2(L/K) + 1`.
    pub fn levels(&self) -> usize {
        num_levels(self.image_size, self.kernel_size)
    }

    /// Number of sub-layers, `2 * levels` (the authors' `depth`).
    pub fn depth(&self) -> usize {
        2 * self.levels()
    }

    /// The sizes of sub-layer `k`'s coupling stack (its config).
    pub fn stack_layout(&self, k: usize) -> crate::kernels::StackLayout {
        crate::kernels::StackLayout {
            channels: self.channels,
            kernel_size: self.kernel_size,
            nlayers: self.nlayers[k],
            nresblocks: self.nresblocks[k],
            nmlp: self.nmlp[k],
            nhidden: self.nhidden[k],
        }
    }

    /// Values per RG block, `C·K²`.
    pub fn block_dim(&self) -> usize {
        self.channels * self.kernel_size * self.kernel_size
    }

    /// Values per image, `C·L²`.
    pub fn num_dims(&self) -> usize {
        self.channels * self.image_size * self.image_size
    }

    /// Parameters of the model this config builds (weight-normalised linear
    /// layers count direction, gain and bias; each Swish its β; each network
    /// its final scale), computed without building it.
    pub fn num_parameters(&self) -> u64 {
        (0..self.depth()).map(|k| self.stack_layout(k).num_params_u64()).sum()
    }

    /// Checks every value; the model is only built from a valid config.
    ///
    /// Beyond the model's own rules, sizes are capped so that an untrusted
    /// weight file cannot make a reader allocate without bound before a
    /// single tensor is checked: L ≤ 1024, K ≤ 16, widths ≤ 4096, layer and
    /// block counts ≤ 64, and at most 100 M parameters in all.
    pub fn validate(&self) -> ConfigResult<()> {
        check_geometry(self.image_size, self.channels, self.kernel_size)?;
        let depth = self.depth();
        for (name, list, min, max) in [
            ("nlayers", &self.nlayers, 1, MAX_COUNT),
            ("nresblocks", &self.nresblocks, 0, MAX_COUNT),
            ("nmlp", &self.nmlp, 1, MAX_COUNT),
            ("nhidden", &self.nhidden, 1, MAX_WIDTH),
        ] {
            if list.len() != depth {
                return Err(Error::Config(format!(
                    "{name} has {} entries, but L = {}, K = {} needs one per sub-layer ({depth})",
                    list.len(),
                    self.image_size,
                    self.kernel_size
                )));
            }
            if let Some(v) = list.iter().find(|&&v| v < min || v > max) {
                return Err(Error::Config(format!("{name} entries must lie in {min}..={max}, got {v}")));
            }
        }
        if self.num_parameters() > MAX_PARAMETERS {
            return Err(Error::Config(format!(
                "the config describes {} parameters; at most {MAX_PARAMETERS} are accepted",
                self.num_parameters()
            )));
        }
        if !(self.logit_constraint > 0.0 && self.logit_constraint < 1.0) {
            return Err(Error::Config(format!("logit_constraint must lie in (0, 1), got {}", self.logit_constraint)));
        }
        Ok(())
    }

    /// Builds the model with the authors' initialisation.
    ///
    /// Every parameter is drawn here, in the module's order, so one seed gives
    /// one model whatever runs first.
    ///
    /// # Panics
    /// If the config is invalid; call [`Self::validate`] first on untrusted input.
    pub fn init(&self, device: &Device) -> RgFlow {
        let flow = self.init_lazy(device);
        flow.visit(&mut Materialise);
        flow
    }

    /// The model's structure with its parameters not yet made (burn's lazy
    /// parameters): for loading weights into, which then never draws or
    /// fills values it would overwrite (a third of a model load).
    ///
    /// # Panics
    /// As [`Self::init`].
    pub(crate) fn init_lazy(&self, device: &Device) -> RgFlow {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        RgFlow::new(self, device)
    }
}

/// Makes every lazy parameter it visits.
struct Materialise;

impl ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        param.val();
    }
}

/// The largest image edge, kernel, width and layer count a config may have.
const MAX_IMAGE_SIZE: usize = 1024;
const MAX_KERNEL_SIZE: usize = 16;
const MAX_WIDTH: usize = 4096;
const MAX_COUNT: usize = 64;
const MAX_PARAMETERS: u64 = 100_000_000;

pub(crate) fn check_geometry(image_size: usize, channels: usize, kernel_size: usize) -> ConfigResult<()> {
    // Images are gray or RGB everywhere pixels enter or leave the model.
    if channels != 1 && channels != 3 {
        return Err(Error::Config(format!("channels must be 1 (gray) or 3 (RGB), got {channels}")));
    }
    if !(2..=MAX_KERNEL_SIZE).contains(&kernel_size) || !kernel_size.is_multiple_of(2) {
        return Err(Error::Config(format!("kernel_size must be even and in 2..={MAX_KERNEL_SIZE}, got {kernel_size}")));
    }
    if image_size > MAX_IMAGE_SIZE {
        return Err(Error::Config(format!("image size L must be at most {MAX_IMAGE_SIZE}, got {image_size}")));
    }
    if !image_size.is_power_of_two() || image_size < kernel_size || !image_size.is_multiple_of(kernel_size) {
        return Err(Error::Config(format!(
            "image size L must be a power of two and a multiple of kernel_size {kernel_size}, got {image_size}"
        )));
    }
    if !(image_size / kernel_size).is_power_of_two() {
        return Err(Error::Config(format!("L / kernel_size must be a power of two, got {image_size} / {kernel_size}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_specs_double_per_level_values() {
        assert_eq!(parse_level_spec("nlayers", "8,6,4,2", 4).unwrap(), vec![8, 8, 6, 6, 4, 4, 2, 2]);
        assert_eq!(parse_level_spec("nmlp", "2", 3).unwrap(), vec![2; 6]);
        assert!(parse_level_spec("nlayers", "8,6", 4).is_err());
        assert!(parse_level_spec("nlayers", "8,x,4,2", 4).is_err());
    }

    #[test]
    fn geometry_is_checked() {
        assert!(RgFlowConfig::from_level_specs(32, 3, "4,3,2,1", "2", "2", "128").is_ok());
        assert!(RgFlowConfig::from_level_specs(24, 3, "1", "1", "1", "8").is_err());
        assert!(RgFlowConfig::from_level_specs(2, 3, "1", "1", "1", "8").is_err());
        assert!(RgFlowConfig::from_level_specs(8, 0, "1", "1", "1", "8").is_err());
        let c = RgFlowConfig::from_level_specs(32, 3, "4,3,2,1", "2", "2", "128").unwrap();
        assert_eq!((c.levels(), c.depth(), c.block_dim()), (4, 8, 48));
        let bad = c.clone().with_logit_constraint(1.0);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn sizes_an_untrusted_file_could_claim_are_refused() {
        let c = RgFlowConfig::from_level_specs(32, 3, "4,3,2,1", "2", "2", "128").unwrap();
        let device = Device::flex();
        assert_eq!(c.num_parameters(), c.init(&device).num_parameters() as u64);
        let small = RgFlowConfig::from_level_specs(8, 1, "2", "1", "3", "7").unwrap();
        assert_eq!(small.num_parameters(), small.init(&device).num_parameters() as u64);
        for (what, bad) in [
            ("channels", RgFlowConfig { channels: 2, ..c.clone() }),
            ("L", RgFlowConfig { image_size: 1 << 40, ..c.clone() }),
            ("nhidden", RgFlowConfig { nhidden: vec![1 << 20; 8], ..c.clone() }),
            ("nlayers", RgFlowConfig { nlayers: vec![1000; 8], ..c.clone() }),
            ("parameters", RgFlowConfig { nhidden: vec![4096; 8], nlayers: vec![64; 8], ..c.clone() }),
        ] {
            assert!(bad.validate().is_err(), "{what}");
        }
    }
}
