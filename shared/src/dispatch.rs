//! Counting what a piece of work asks of a GPU runtime: kernel dispatches,
//! distinct compiled kernels and the host reads it waits for.
//!
//! On a GPU this model's time goes to its many small ops (2.4 M parameters,
//! tens of thousands of kernels per training step), not to arithmetic, so
//! these counts — not FLOPs — say how far a pass is from what the device
//! allows. Dispatches and
//! kernels come from CubeCL's own hooks, on the thread that issues each
//! launch (`cubecl::logging::LaunchObserver`, `cubecl::launched`): every
//! CubeCL backend (wgpu, WebGPU, CUDA) reports there, whatever op or fused
//! kernel issued it. A host read is any read of device values into host
//! memory made through [`read_to_host`] — the reads *our* code asks for
//! (the loss, the gradient norm, a decoded image); CubeCL has no hook for
//! reads, so one made inside burn (autotune's timing while it tunes, for
//! instance) is not counted.
//!
//! burn's fusion queues ops and launches them when their results are needed,
//! so a count covers the launches *issued* while it was open: sync the
//! device before [`DispatchCounter::start`] and before
//! [`DispatchCounter::finish`] to count exactly one piece of work.
//!
//! The counter needs a CubeCL backend compiled in (the `wgpu` feature);
//! [`read_to_host`] is always there.
//!
//! ```
//! # #[cfg(feature = "wgpu")] {
//! use burn::prelude::*;
//! use rgflow::dispatch::{DispatchCounter, read_to_host};
//!
//! let device = Device::flex();
//! let x = Tensor::<1>::from_floats([1.0, 2.0], &device);
//! let counter = DispatchCounter::start();
//! let values = read_to_host(x.exp());
//! let count = counter.finish();
//! // The CPU backend launches no CubeCL kernels; the read is ours.
//! assert_eq!((count.dispatches(), count.host_reads), (0, 1));
//! assert_eq!(values.try_to_vec::<f32>().unwrap().len(), 2);
//! # }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::prelude::*;
use burn::tensor::TensorData;

/// Host reads made through [`read_to_host`] since the process started.
static HOST_READS: AtomicUsize = AtomicUsize::new(0);

/// Reads a tensor's values into host memory, counted as one host read (a
/// device synchronisation on a GPU backend).
pub fn read_to_host<const D: usize>(tensor: Tensor<D>) -> TensorData {
    HOST_READS.fetch_add(1, Ordering::Relaxed);
    tensor.into_data()
}

/// Counts a host read made without [`read_to_host`] (the GPU decoder
/// reads its own buffers).
#[cfg(feature = "wgpu")]
pub(crate) fn note_host_read() {
    HOST_READS.fetch_add(1, Ordering::Relaxed);
}

/// Host reads made through [`read_to_host`] (and by the GPU decoder)
/// since the process started.
pub fn host_reads() -> usize {
    HOST_READS.load(Ordering::Relaxed)
}

#[cfg(feature = "wgpu")]
pub use counter::{DispatchCount, DispatchCounter};

/// The counter, over CubeCL's hooks (only where a CubeCL backend is built in).
#[cfg(feature = "wgpu")]
mod counter {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::{Arc, Mutex};

    use burn::cubecl::launched::LaunchedKernels;
    use burn::cubecl::logging::{LaunchObservation, LaunchObserver};

    /// What was counted between [`DispatchCounter::start`] and
    /// [`DispatchCounter::finish`].
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct DispatchCount {
        /// Distinct kernels among them: compiled variants, told apart by
        /// CubeCL's kernel id (name, settings and shapes it specialises on).
        pub kernels: usize,
        /// Launches per kernel name, as the kernels name themselves.
        pub by_name: BTreeMap<String, usize>,
        /// Reads made through [`read_to_host`](super::read_to_host).
        pub host_reads: usize,
    }

    impl DispatchCount {
        /// Kernel launches issued (each one dispatch on the device).
        pub fn dispatches(&self) -> usize {
            self.by_name.values().sum()
        }

        /// The `n` most launched kernel names, most launched first (ties by name).
        pub fn most_launched(&self, n: usize) -> Vec<(&str, usize)> {
            let mut names: Vec<(&str, usize)> = self.by_name.iter().map(|(k, &v)| (k.as_str(), v)).collect();
            names.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            names.truncate(n);
            names
        }
    }

    impl std::fmt::Display for DispatchCount {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{} dispatches ({} distinct kernels, {} kernel names), {} host reads",
                self.dispatches(),
                self.kernels,
                self.by_name.len(),
                self.host_reads
            )
        }
    }

    /// Launches per kernel name, told by CubeCL on the issuing thread.
    #[derive(Default)]
    struct Launches(Mutex<HashMap<&'static str, usize>>);

    impl LaunchObserver for Launches {
        fn launched(&self, kernel: &'static str) {
            // A poisoned lock only means another launch's count panicked; the
            // map itself is still whole.
            let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
            *counts.entry(kernel).or_default() += 1;
        }
    }

    /// Counts dispatches, distinct kernels and host reads from
    /// [`start`](Self::start) to [`finish`](Self::finish), on every thread and
    /// device (CubeCL's hooks are process-wide): one counter at a time is
    /// meaningful, and work on other threads in between is counted too.
    #[must_use = "counting stops when the counter is finished or dropped"]
    pub struct DispatchCounter {
        launches: Arc<Launches>,
        observation: LaunchObservation,
        kernels: LaunchedKernels,
        host_reads_at_start: usize,
    }

    impl DispatchCounter {
        /// Starts counting.
        pub fn start() -> Self {
            let launches = Arc::new(Launches::default());
            Self {
                observation: LaunchObservation::new(launches.clone()),
                launches,
                kernels: LaunchedKernels::new(),
                host_reads_at_start: super::host_reads(),
            }
        }

        /// Stops counting and returns what was counted.
        pub fn finish(self) -> DispatchCount {
            let Self { launches, observation, kernels, host_reads_at_start } = self;
            drop(observation);
            let kernels = kernels.finish().len();
            let by_name: BTreeMap<String, usize> = launches
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(name, &count)| (name.to_string(), count))
                .collect();
            DispatchCount { kernels, by_name, host_reads: super::host_reads() - host_reads_at_start }
        }
    }
}

/// A kernel's type name as a reader wants it: module paths dropped and
/// generic arguments kept one level deep, so
/// `burn_cubecl::kernel::binary::KernelBinop<burn_cubecl::kernel::binary::MulOp>`
/// reads `KernelBinop<MulOp>` and a matmul's dozen nested parameters do not
/// fill a line.
pub fn short_kernel_name(name: &str) -> String {
    let mut out = String::new();
    let mut segment = String::new();
    let mut depth = 0usize;
    let flush = |segment: &mut String, out: &mut String, depth: usize| {
        if depth <= 1 {
            out.push_str(segment.rsplit("::").next().unwrap_or(""));
        }
        segment.clear();
    };
    for c in name.chars() {
        match c {
            '<' | '(' => {
                flush(&mut segment, &mut out, depth);
                if depth == 0 {
                    out.push(c);
                }
                depth += 1;
            }
            '>' | ')' => {
                flush(&mut segment, &mut out, depth);
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    out.push(c);
                }
            }
            ',' => {
                flush(&mut segment, &mut out, depth);
                if depth == 1 {
                    out.push_str(", ");
                }
            }
            ' ' => {}
            c => segment.push(c),
        }
    }
    flush(&mut segment, &mut out, depth);
    out
}

#[cfg(test)]
mod tests {
    use super::short_kernel_name;

    #[test]
    fn kernel_names_lose_their_paths_and_deep_generics() {
        assert_eq!(short_kernel_name("a::b::KernelBinop<a::b::MulOp>"), "KernelBinop<MulOp>");
        assert_eq!(short_kernel_name("x::ElemwiseFuse"), "ElemwiseFuse");
        assert_eq!(
            short_kernel_name("m::Entry<m::Args, c::Dyn<m::__Lhs>, (), s::Fam<t::P, ()>>"),
            "Entry<Args, Dyn, , Fam>"
        );
    }
}
