use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::Instant;

fn time<F: FnMut() -> Tensor<2>>(name: &str, n: usize, mut f: F) {
    let _ = f().into_data();
    let t = Instant::now();
    for _ in 0..n {
        let _ = f().into_data();
    }
    println!("{name}: {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / n as f64);
}

fn main() {
    let d = if std::env::args().nth(1).as_deref() == Some("ndarray") {
        #[allow(deprecated)]
        Device::ndarray()
    } else {
        Device::flex()
    };
    let x = Tensor::<2>::random([4096, 128], Distribution::Normal(0., 1.), &d);
    let x48 = Tensor::<2>::random([4096, 48], Distribution::Normal(0., 1.), &d);
    let w = Tensor::<2>::random([128, 128], Distribution::Normal(0., 1.), &d);
    let w1 = Tensor::<2>::random([48, 128], Distribution::Normal(0., 1.), &d);
    let b = Tensor::<1>::random([128], Distribution::Normal(0., 1.), &d);
    time("matmul 4096x128x128", 50, || x.clone().matmul(w.clone()));
    time("matmul 4096x48x128", 50, || x48.clone().matmul(w1.clone()));
    time("linear fn w/ bias", 50, || burn::tensor::module::linear(x.clone(), w.clone(), Some(b.clone())));
    time("add bias", 50, || x.clone() + b.clone().unsqueeze::<2>());
    time("sigmoid", 50, || burn::tensor::activation::sigmoid(x.clone()));
    time("mul", 50, || x.clone() * x.clone());
    time("mul_scalar", 50, || x.clone().mul_scalar(0.7));
    time("swish", 50, || x.clone() * burn::tensor::activation::sigmoid(x.clone() * b.clone().unsqueeze::<2>()));
    time("tanh", 50, || x.clone().tanh());
    time("exp", 50, || x.clone().exp());
}
