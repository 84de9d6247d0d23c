//! Model hyper-parameters on the command line, the authors' style.

use clap::Args;
use rgflow::{PriorKind, RgFlowConfig};

/// `--size 32 --nlayers 4,3,2,1 ...`: one value per level or one for all.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Image edge length L (a power of two).
    #[arg(long = "size", short = 'L', default_value_t = 32)]
    pub image_size: usize,
    /// Channels (3 = RGB, 1 = gray).
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// RG block edge K.
    #[arg(long, default_value_t = 4)]
    pub kernel_size: usize,
    /// Coupling layers per sub-layer: one per level (finest first) or one for all.
    #[arg(long, default_value = "4,3,2,1")]
    pub nlayers: String,
    /// Residual blocks per s/t network.
    #[arg(long, default_value = "2")]
    pub nresblocks: String,
    /// Hidden layers per residual block.
    #[arg(long, default_value = "2")]
    pub nmlp: String,
    /// Hidden width.
    #[arg(long, default_value = "128")]
    pub nhidden: String,
    /// Prior of the latents.
    #[arg(long, value_enum, default_value_t = PriorArg::Laplace)]
    pub prior: PriorArg,
}

/// `--prior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PriorArg {
    Laplace,
    Gaussian,
}

impl ModelArgs {
    /// The validated config.
    pub fn to_config(&self) -> anyhow::Result<RgFlowConfig> {
        let config = RgFlowConfig::from_level_specs_with_kernel(
            self.image_size,
            self.channels,
            self.kernel_size,
            &self.nlayers,
            &self.nresblocks,
            &self.nmlp,
            &self.nhidden,
        )?
        .with_prior(match self.prior {
            PriorArg::Laplace => PriorKind::Laplace,
            PriorArg::Gaussian => PriorKind::Gaussian,
        });
        Ok(config)
    }
}
