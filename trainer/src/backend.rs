//! Choosing the device: a real GPU through wgpu when there is one, else the CPU.

use burn::prelude::Device;

/// `--backend` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// wgpu on a real GPU adapter if one exists, else the CPU backend.
    Auto,
    /// The pure-Rust multi-threaded CPU backend (burn's successor to ndarray).
    #[value(alias = "cpu")]
    Flex,
    /// burn's ndarray CPU backend (deprecated by burn, kept for comparison).
    Ndarray,
    /// wgpu on the default adapter (also a software one such as lavapipe).
    Wgpu,
}

/// The device and a one-line description of it.
pub fn select(choice: BackendChoice) -> anyhow::Result<(Device, String)> {
    match choice {
        BackendChoice::Flex => Ok((Device::flex(), "flex (CPU)".into())),
        BackendChoice::Ndarray => ndarray(),
        BackendChoice::Wgpu => wgpu(),
        BackendChoice::Auto => match gpu_adapter() {
            Some(name) => wgpu().map(|(d, _)| (d, format!("wgpu on {name} (auto: a GPU adapter exists)"))),
            None => Ok((Device::flex(), "flex (CPU; auto: no GPU adapter)".into())),
        },
    }
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)] // offered for comparison; flex is the default CPU backend
fn ndarray() -> anyhow::Result<(Device, String)> {
    Ok((Device::ndarray(), "ndarray (CPU)".into()))
}

#[cfg(not(feature = "ndarray"))]
fn ndarray() -> anyhow::Result<(Device, String)> {
    anyhow::bail!("this trainer was built without the `ndarray` feature")
}

#[cfg(feature = "wgpu")]
fn wgpu() -> anyhow::Result<(Device, String)> {
    let device =
        Device::wgpu_options().init().map_err(|e| anyhow::anyhow!("no wgpu adapter could be initialised: {e:?}"))?;
    let name = any_adapter().unwrap_or_else(|| "default adapter".into());
    Ok((device, format!("wgpu on {name}")))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu() -> anyhow::Result<(Device, String)> {
    anyhow::bail!("this trainer was built without the `wgpu` feature")
}

#[cfg(feature = "wgpu")]
fn adapters() -> Vec<burn::tensor::wgpu::wgpu::AdapterInfo> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::default();
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all())).iter().map(|a| a.get_info()).collect()
}

/// Name of a hardware (non-CPU) GPU adapter, if the machine has one.
pub fn gpu_adapter() -> Option<String> {
    #[cfg(feature = "wgpu")]
    {
        use burn::tensor::wgpu::wgpu::DeviceType;
        adapters().into_iter().find(|a| a.device_type != DeviceType::Cpu).map(|a| a.name)
    }
    #[cfg(not(feature = "wgpu"))]
    None
}

#[cfg(feature = "wgpu")]
fn any_adapter() -> Option<String> {
    adapters().into_iter().next().map(|a| format!("{} ({:?})", a.name, a.device_type))
}

/// `n` devices for data-parallel training (see `crate::parallel`) and a
/// description: the first `n` wgpu devices when the choice resolves to wgpu,
/// else `n` replicas on the one CPU device.
pub fn select_devices(choice: BackendChoice, n: usize) -> anyhow::Result<(Vec<Device>, String)> {
    let (device, name) = select(choice)?;
    if n <= 1 {
        return Ok((vec![device], name));
    }
    if !rgflow::host_memory(&device) {
        // Not a host-memory (CPU) backend: wgpu.
        return wgpu_devices(n);
    }
    Ok((vec![device; n], format!("{name}, {n} shares of each batch on threads of the one CPU")))
}

/// Keeps CubeCL's measurements of this machine — autotune's choice of
/// kernel for each shape above all, and its launch and throughput probes —
/// in the folder `dir` from now on, so that a run resumed from that folder
/// uses them instead of tuning again (on a GPU the first steps of a process
/// otherwise spend tens of seconds timing candidates).
#[cfg(feature = "wgpu")]
pub fn keep_gpu_tuning_in(dir: &std::path::Path) {
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    // The configuration sets its own root when it first loads: load it, then move the root.
    let _ = CubeClRuntimeConfig::get();
    burn::cubecl::environment::set_root(dir);
}

#[cfg(not(feature = "wgpu"))]
pub fn keep_gpu_tuning_in(_: &std::path::Path) {}

/// The first `n` GPU cards, one device each: `Device::enumerate_physical`
/// lists a card once even when several APIs reach it, and leaves out
/// software adapters (lavapipe), which would only slow a share down.
#[cfg(feature = "wgpu")]
fn wgpu_devices(n: usize) -> anyhow::Result<(Vec<Device>, String)> {
    let cards = Device::enumerate_physical();
    if cards.len() < n {
        let names: Vec<&str> = cards.iter().map(|c| c.name.as_str()).collect();
        anyhow::bail!(
            "--devices {n}: this machine has {} GPU card(s) that wgpu reaches{}",
            cards.len(),
            if names.is_empty() { String::new() } else { format!(": {}", names.join(", ")) }
        );
    }
    let cards = &cards[..n];
    let names: Vec<&str> = cards.iter().map(|c| c.name.as_str()).collect();
    let devices = cards.iter().map(|c| c.devices[0].clone()).collect();
    Ok((devices, format!("wgpu on {n} GPUs ({})", names.join(", "))))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_devices(_: usize) -> anyhow::Result<(Vec<Device>, String)> {
    anyhow::bail!("this trainer was built without the `wgpu` feature")
}
