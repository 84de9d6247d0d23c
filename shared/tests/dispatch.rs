//! `rgflow::dispatch` on wgpu (lavapipe on CI). Its own test binary: the
//! counts are process-wide, so tests running beside it would add theirs.
#![cfg(feature = "wgpu")]

use std::sync::Mutex;

use burn::prelude::*;
use burn::tensor::Distribution;
use rgflow::dispatch::{DispatchCounter, read_to_host, short_kernel_name};
use rgflow::flow::Direction;
use rgflow::kernels::{self, CouplingParams};

/// One count at a time: the tests of this binary run on parallel threads.
static SERIAL: Mutex<()> = Mutex::new(());

/// On wgpu (lavapipe here) a few ops launch kernels, the same work twice
/// launches the same kernels twice, and reads are counted.
#[test]
fn counts_wgpu_dispatches_kernels_and_reads() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

/// Each fused op's forward is one kernel and its backward at most two
/// (the element-wise pass and the column sums' second pass).
#[test]
fn fused_ops_are_one_or_two_kernels_on_wgpu() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::wgpu(Default::default()).autodiff();
    let normal = |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let vector = || Tensor::<1>::random([48], Distribution::Uniform(0.5, 1.5), &device).require_grad();
    let (x, v) = (normal([200, 48]).require_grad(), normal([32, 48]).require_grad());
    let (bias, beta, g) = (vector(), vector(), vector());
    let p = CouplingParams { s_scale: vector(), t_scale: vector(), mask: Tensor::ones([48], &device) };
    device.sync().unwrap();
    let counter = DispatchCounter::start();
    let y = kernels::bias_swish(x.clone(), bias.clone(), beta.clone());
    let y = kernels::residual(x.clone(), y, bias.clone());
    let y = kernels::coupling_update(y.clone(), x.clone(), y, &p, Direction::Forward);
    let w = kernels::weight_norm(v.clone(), g.clone());
    let loss = y.sum() + kernels::coupling_log_scale(x.clone(), &p).sum() + w.sum();
    let grads = loss.backward();
    let gradients = [&bias, &beta, &g, &p.s_scale, &p.t_scale].map(|t| t.grad(&grads).unwrap());
    let _ = [x.grad(&grads).unwrap(), v.grad(&grads).unwrap()];
    // Read, so that burn's fusion runs the forward's every op (it drops work whose results are never used).
    assert!(loss.into_scalar::<f32>().is_finite());
    device.sync().unwrap();
    let count = counter.finish();
    let launches =
        |name: &str| count.by_name.iter().filter(|(k, _)| short_kernel_name(k) == name).map(|(_, &n)| n).sum::<usize>();
    for kernel in [
        "SwishKernel",
        "SwishBackwardKernel",
        "ResidualKernel",
        "ResidualBackwardKernel",
        "CouplingUpdateKernel",
        "CouplingUpdateBackwardKernel",
        "LogScaleKernel",
        "LogScaleBackwardKernel",
        "WeightNormKernel",
        "WeightNormBackwardKernel",
    ] {
        assert_eq!(launches(kernel), 1, "{kernel} in {:?}", count.by_name);
    }
    // Column sums: swish (bias, β) and coupling (scales) as pairs, the
    // residual's bias and the log-scale's alone.
    assert_eq!((launches("ColumnSumsPairKernel"), launches("ColumnSumsKernel")), (2, 2));
    assert!(gradients.iter().all(|t| t.clone().abs().sum().into_scalar::<f32>() > 0.0));
}

/// A Swish without a bias reuses its zeros: a second call is one kernel,
/// with no fill before it.
#[test]
fn a_swish_without_bias_launches_one_kernel() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::wgpu(Default::default());
    let x = Tensor::<2>::random([64, 48], Distribution::Normal(0.0, 1.0), &device);
    let beta = Tensor::<1>::ones([48], &device);
    let _ = kernels::swish(x.clone(), beta.clone()).into_data();
    device.sync().unwrap();
    let counter = DispatchCounter::start();
    let y = kernels::swish(x, beta).into_data();
    device.sync().unwrap();
    let count = counter.finish();
    let names: Vec<String> = count.by_name.keys().map(|k| short_kernel_name(k)).collect();
    assert_eq!((count.dispatches(), names), (1, vec!["SwishKernel".to_string()]), "{count}");
    assert_eq!(y.num_elements(), 64 * 48);
}
