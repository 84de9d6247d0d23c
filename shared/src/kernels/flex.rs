//! [`FusedKernels`] on burn-flex: the [`cpu`](super::cpu) slice kernels.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::backend::TensorMetadata;
use burn::tensor::{DType, Shape, TensorData};

use super::{FusedKernels, cpu, reference};

/// A contiguous f32 view of `t` (copying a strided tensor).
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() { t } else { t.to_contiguous() }
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn from_vec(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl FusedKernels for Flex {
    fn swish(x: FlexTensor, beta: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || beta.dtype() != DType::F32 {
            return reference::swish::<Self>(x, beta);
        }
        let (x, beta) = (contiguous(x), contiguous(beta));
        let mut y = vec![0.0; x.shape().num_elements()];
        cpu::swish(f32s(&x), f32s(&beta), &mut y);
        from_vec(y, x.shape())
    }

    fn swish_backward(x: FlexTensor, beta: FlexTensor, grad: FlexTensor) -> (FlexTensor, FlexTensor) {
        if [x.dtype(), beta.dtype(), grad.dtype()].iter().any(|d| *d != DType::F32) {
            return reference::swish_backward::<Self>(x, beta, grad);
        }
        let (x, beta, grad) = (contiguous(x), contiguous(beta), contiguous(grad));
        let mut grad_x = vec![0.0; x.shape().num_elements()];
        let grad_beta = cpu::swish_backward(f32s(&x), f32s(&beta), f32s(&grad), &mut grad_x);
        (from_vec(grad_x, x.shape()), from_vec(grad_beta, beta.shape()))
    }
}
