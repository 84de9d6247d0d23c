//! `rgflow::dispatch` on wgpu (lavapipe on CI). Its own test binary: the
//! counts are process-wide, so tests running beside it would add theirs.
#![cfg(feature = "wgpu")]

use burn::prelude::*;
use rgflow::dispatch::{DispatchCounter, read_to_host};

/// On wgpu (lavapipe here) a few ops launch kernels, the same work twice
/// launches the same kernels twice, and reads are counted.
#[test]
fn counts_wgpu_dispatches_kernels_and_reads() {
    let device = Device::wgpu(Default::default());
    let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
    // Once uncounted: with autotune on, a first launch may time candidates.
    let _ = x.clone().exp().sum().into_data();
    device.sync().unwrap();
    let once = DispatchCounter::start();
    let a = read_to_host(x.clone().exp().sum());
    let once = once.finish();
    assert!(once.dispatches() >= 1, "{once}");
    assert_eq!(once.host_reads, 1);
    assert!(a.try_to_vec::<f32>().unwrap()[0] > 30.0);

    // The same work again compiles nothing new and launches as often.
    let twice = DispatchCounter::start();
    for _ in 0..2 {
        let _ = read_to_host(x.clone().exp().sum());
    }
    let twice = twice.finish();
    assert_eq!(twice.dispatches(), 2 * once.dispatches(), "{once} / {twice}");
    assert_eq!(twice.kernels, once.kernels, "{once} / {twice}");
    assert_eq!(twice.host_reads, 2);
    assert_eq!(twice.most_launched(1)[0].1, *twice.by_name.values().max().unwrap());
}
