//! `trainer import`: the authors' PyTorch checkpoints as our weight files.
//!
//! Their training script saves `{'flow': state_dict, 'optimizer': …}` every
//! epoch (`out_save/{epoch}.state`); a bare `torch.save(state_dict)` or a
//! safetensors export reads too. Their model's sizes are not in the file, so
//! `--config` gives their command-line arguments as JSON (`"nlayers":
//! "8,6,4,2"` as on their command line, or per-sub-layer lists; their
//! defaults for what is left out).

use std::path::PathBuf;

use burn::prelude::*;
use clap::Args;
use rgflow::import::{ReferenceConfig, StateDict, load_reference};

/// Arguments of `trainer import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The authors' checkpoint: a `torch.save` file (`.state`, `.pth`, `.pt`)
    /// or a safetensors state dict, with their key names.
    #[arg(long)]
    pub from: PathBuf,
    /// Their arguments for that model as JSON (`L`, `nchannels`,
    /// `kernel_size`, `prior`, `nlayers`, `nresblocks`, `nmlp`, `nhidden`).
    #[arg(long)]
    pub config: PathBuf,
    /// Output weight file, loaded by every command and the web demo.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Store weights as 16-bit floats (half the size).
    #[arg(long)]
    pub f16: bool,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let device = Device::flex();
    let config = ReferenceConfig::read(&args.config)?.to_config()?;
    let state = StateDict::open(&args.from)?;
    let model = load_reference(&state, &config, &device)?;
    crate::export::write_validated(&model, &args.from, &args.out, args.f16)?;
    println!("score it with: trainer eval --model {} --data …", args.out.display());
    Ok(())
}
