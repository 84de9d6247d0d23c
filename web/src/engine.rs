//! The model and every operation the page offers, with no DOM in sight, so
//! the same calls run in wasm-bindgen tests and natively.
//!
//! Results come back to the host with `into_data_async` only: a browser's
//! WebGPU cannot block on a readback.

use burn::prelude::*;
use burn::tensor::TensorData;
#[cfg(feature = "webgpu")]
use rgflow::GpuDecoder;
use rgflow::decoder::{Decoder, ProductPrecision};
use rgflow::explore::factors::{LatentSite, random_walk};
use rgflow::explore::inpaint::{ConeSampler, SampleOptions};
use rgflow::explore::levels::{level_values, mix_levels, with_level_values};
use rgflow::explore::receptive::receptive_field_tensor;
use rgflow::{LevelTemperatures, PackedFlow, RgFlow, RgFlowConfig, preprocess};

use crate::backend::BackendKind;
use crate::error::{Result, WebError};
use crate::face::Face;

/// A loaded model on a device.
pub struct Engine {
    flow: RgFlow,
    /// On the CPU backend, the flow packed (f32) for the inpainting
    /// sampler's local passes.
    packed: Option<PackedFlow>,
    /// Latents to images: the packed flow's decoder on the CPU backend,
    /// burn ops elsewhere (where `gpu` is none).
    decoder: Decoder,
    /// On WebGPU, the fused GPU decoder: one kernel launch per sub-layer,
    /// three kernels to compile instead of burn's dozens.
    #[cfg(feature = "webgpu")]
    gpu: Option<std::sync::Arc<GpuDecoder>>,
    device: Device,
    backend: BackendKind,
}

/// Reads a tensor back to the host (asynchronously, as WebGPU requires).
pub async fn read<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    let data = t.into_data_async().await.map_err(|e| WebError::Backend(format!("reading a result back: {e:?}")))?;
    data.try_to_vec::<f32>().map_err(|e| WebError::Backend(format!("result is not f32: {e:?}")))
}

impl Engine {
    /// Validates and loads a weight file (as written by `trainer export`).
    pub fn load(bytes: Vec<u8>, source: &str, device: Device, backend: BackendKind) -> Result<Self> {
        // Loaded on the CPU first: the GPU decoder packs its weights from host
        // values, and a WebGPU tensor cannot be read synchronously.
        let host_flow = rgflow::weights::from_bytes(bytes, source, &Device::flex())?;
        let flow = if device == Device::flex() { host_flow.clone() } else { host_flow.clone().to_device(&device) };
        let packed = PackedFlow::for_device(&flow, &device);
        let decoder = match &packed {
            // The packed flow's own decoder: the inverse is packed once.
            Some(packed) => packed.decoder(),
            None => Decoder::for_device(&flow, &device, ProductPrecision::F32)?,
        };
        Ok(Self {
            #[cfg(feature = "webgpu")]
            gpu: GpuDecoder::for_device(&host_flow, &device)?,
            flow,
            packed,
            decoder,
            device,
            backend,
        })
    }

    /// Latents to `[0, 1]` images on the host: `[B, C, L, L]` in, as many
    /// values out (the GPU decoder's read back is asynchronous too).
    async fn decode_to_host(&self, z: Tensor<4>) -> Result<Vec<f32>> {
        #[cfg(feature = "webgpu")]
        if let Some(gpu) = &self.gpu {
            return Ok(gpu.pixels_async(&read(z).await?).await?);
        }
        read(self.decoder.decode(z)).await
    }

    /// [`Self::decode_to_host`] and the latents' values too, `(x01, z)`,
    /// with `z` read once.
    async fn face_values(&self, z: Tensor<4>) -> Result<(Vec<f32>, Vec<f32>)> {
        #[cfg(feature = "webgpu")]
        if let Some(gpu) = &self.gpu {
            let z = read(z).await?;
            return Ok((gpu.pixels_async(&z).await?, z));
        }
        Ok((read(self.decoder.decode(z.clone())).await?, read(z).await?))
    }

    pub fn flow(&self) -> &RgFlow {
        &self.flow
    }

    pub fn config(&self) -> &RgFlowConfig {
        self.flow.config()
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Number of levels (index 0 = finest).
    pub fn levels(&self) -> usize {
        self.flow.lattice().levels()
    }

    /// Values per image, `C·L·L`.
    pub fn image_len(&self) -> usize {
        let c = self.config();
        c.channels * c.image_size * c.image_size
    }

    fn tensor(&self, values: Vec<f32>, n: usize) -> Result<Tensor<4>> {
        let c = self.config();
        if values.len() != n * self.image_len() {
            return Err(WebError::Input(format!(
                "expected {} values for {n} images, got {}",
                n * self.image_len(),
                values.len()
            )));
        }
        Ok(Tensor::from_data(TensorData::new(values, [n, c.channels, c.image_size, c.image_size]), &self.device))
    }

    fn split(&self, values: Vec<f32>) -> Vec<Vec<f32>> {
        values.chunks(self.image_len()).map(<[f32]>::to_vec).collect()
    }

    /// `n` faces from the prior, seeded on the host so every backend (and
    /// the trainer's `sample`) draws the same latents.
    pub async fn sample(&self, n: usize, temperatures: &[f64], seed: u64) -> Result<Vec<Face>> {
        let temps = LevelTemperatures::new(temperatures.to_vec(), self.levels())?;
        let z = self.flow.sample_latents(n, &temps, seed, &self.device)?;
        let (x, z) = self.face_values(z).await?;
        Ok(self.split(x).into_iter().zip(self.split(z)).map(|(x01, z)| Face { x01, z }).collect())
    }

    /// Images of latents, `n·C·L·L` values in, as many out.
    pub async fn decode(&self, z: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        self.decode_to_host(self.tensor(z, n)?).await
    }

    /// Encodes an image (`[0, 1]` values) and scores it: the face and its
    /// bits per dimension at the centre of every quantisation bin.
    pub async fn encode(&self, x01: Vec<f32>) -> Result<(Face, f64)> {
        let z = self.flow.encode(self.tensor(x01.clone(), 1)?);
        // Centre of the 256 bins: the image as a dequantised sample would see it.
        let bpd = self.flow.bits_per_dim(self.tensor(preprocess::bin_centres(&x01), 1)?);
        let z = read(z).await?;
        let bpd = read(bpd).await?[0] as f64;
        Ok((Face { x01, z }, bpd))
    }

    /// The mixture that takes levels `≥ lambda` from `a` and the finer ones
    /// from `b`, for every `lambda` in `0..=levels`: `levels + 1` images.
    pub async fn mix_strip(&self, a: &Face, b: &Face) -> Result<Vec<Vec<f32>>> {
        let k = self.levels() + 1;
        let za = self.tensor(a.z.clone(), 1)?;
        let zb = self.tensor(b.z.clone(), 1)?;
        let mixed: Vec<Tensor<4>> =
            (0..k).map(|lambda| mix_levels(&self.flow, za.clone(), zb.clone(), lambda)).collect();
        let x = self.decode_to_host(Tensor::cat(mixed, 0)).await?;
        Ok(self.split(x))
    }

    /// The latents of one level of a face, `[C·sites]` (channel-major).
    pub async fn level_latents(&self, face: &Face, level: usize) -> Result<Vec<f32>> {
        self.check_level(level)?;
        read(level_values(&self.flow, self.tensor(face.z.clone(), 1)?, level)).await
    }

    /// The face with one level's latents replaced (`values` as from [`Self::level_latents`]).
    pub async fn with_level_latents(&self, face: &Face, level: usize, values: Vec<f32>) -> Result<Face> {
        self.check_level(level)?;
        let count = self.flow.lattice().level_elements(level, self.config().channels).len();
        if values.len() != count {
            return Err(WebError::Input(format!("level {level} has {count} latents, got {}", values.len())));
        }
        let values = Tensor::<2>::from_data(TensorData::new(values, [1, count]), &self.device);
        let z = with_level_values(&self.flow, self.tensor(face.z.clone(), 1)?, level, values);
        let (x01, z) = self.face_values(z).await?;
        Ok(Face { x01, z })
    }

    /// A closed random walk of the latents of one level: `frames` images.
    pub async fn random_walk(&self, face: &Face, level: usize, frames: usize, seed: u64) -> Result<Vec<Vec<f32>>> {
        self.check_level(level)?;
        let angle = std::f64::consts::TAU / frames as f64;
        let z = random_walk(&self.flow, self.tensor(face.z.clone(), 1)?, level, frames, angle, seed)?;
        Ok(self.split(self.decode_to_host(z).await?))
    }

    /// `∂x/∂z` of the latent at `site` (row-major index) and `channel`: `[C, L, L]`.
    pub async fn receptive_field(&self, face: &Face, site: usize, channel: usize) -> Result<Vec<f32>> {
        let size = self.config().image_size;
        let latent = LatentSite { row: site / size, col: site % size, channel };
        let field = receptive_field_tensor(&self.flow, self.tensor(face.z.clone(), 1)?, latent, 1e-2)?;
        read(field).await
    }

    /// The Inpaint panel's sampler settings: one completion, `rounds` rounds,
    /// temperature `temperature` at the coarsest level falling linearly to
    /// 0.4 of it at the finest (fine levels colder, as the benchmark's
    /// `0.4..1`), drawn from `seed`.
    pub fn stroke_options(&self, temperature: f64, rounds: usize, seed: u64) -> Result<SampleOptions> {
        let temperatures = LevelTemperatures::parse(&format!("{}..{temperature}", 0.4 * temperature), self.levels())?;
        Ok(SampleOptions { samples: 1, rounds, temperatures, seed, ..SampleOptions::new(self.levels(), temperature) })
    }

    /// Starts drawing completions of the sites marked in `unknown` (`[L·L]`) of a face.
    pub fn cone_sampler(&self, face: &Face, unknown: &[bool], options: SampleOptions) -> Result<ConeSampler> {
        Ok(match &self.packed {
            Some(packed) => ConeSampler::packed(packed, &face.x01, unknown, options)?,
            None => ConeSampler::new(&self.flow, &face.x01, unknown, options, &self.device)?,
        })
    }

    /// One round of a sampler (its one read-back is asynchronous).
    pub async fn sampler_round(&self, sampler: &mut ConeSampler) -> Result<()> {
        let values = read(sampler.readout()).await?;
        Ok(sampler.redraw(&values)?)
    }

    /// A sampler's completions as they stand, `[K, C, L, L]` flattened, in `[0, 1]`.
    pub async fn sampled(&self, sampler: &ConeSampler) -> Result<Vec<f32>> {
        read(sampler.images()).await
    }

    fn check_level(&self, level: usize) -> Result<()> {
        if level >= self.levels() {
            return Err(WebError::Input(format!("the model has levels 0..{}, not {level}", self.levels() - 1)));
        }
        Ok(())
    }
}
