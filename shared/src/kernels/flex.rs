//! [`FusedKernels`] on burn-flex: the [`cpu`](super::cpu) slice kernels.

use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, TensorData};

use super::{AdamWStep, FusedKernels, StackLayout, cpu, reference};
use crate::decoder::ProductPrecision;
use crate::flow::Direction;

/// Runs `kernel` on the inputs as contiguous f32 tensors, or `reference` on
/// them as they are when one is of another dtype.
fn f32_or_reference<const N: usize, R>(
    inputs: [FlexTensor; N],
    kernel: impl FnOnce([FlexTensor; N]) -> R,
    reference: impl FnOnce([FlexTensor; N]) -> R,
) -> R {
    if inputs.iter().all(|t| t.dtype() == DType::F32) {
        kernel(inputs.map(|t| if t.is_contiguous() { t } else { t.to_contiguous() }))
    } else {
        reference(inputs)
    }
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// A contiguous f32 tensor whose buffer holds its values and nothing else:
/// itself, or (a view into a larger buffer) a copy of its values.
fn own_buffer(t: FlexTensor) -> FlexTensor {
    if t.layout().contiguous_offsets() == Some((0, t.storage::<f32>().len())) {
        t
    } else {
        tensor(f32s(&t).to_vec(), t.shape())
    }
}

impl FusedKernels for Flex {
    fn adamw_update(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        grad_scale: FlexTensor,
        step: AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        f32_or_reference(
            [param, grad, moment_1, moment_2, grad_scale],
            |[param, grad, moment_1, moment_2, grad_scale]| {
                // In place. A buffer shared with another tensor (a snapshot's)
                // is copied first, by `storage_mut`'s copy on write.
                let [mut p, mut m, mut v] = [param, moment_1, moment_2].map(own_buffer);
                cpu::adamw_update(
                    p.storage_mut::<f32>(),
                    f32s(&grad),
                    m.storage_mut::<f32>(),
                    v.storage_mut::<f32>(),
                    f32s(&grad_scale)[0],
                    &step,
                );
                (p, m, v)
            },
            |[param, grad, moment_1, moment_2, grad_scale]| {
                reference::adamw_update::<Self>(param, grad, moment_1, moment_2, grad_scale, step)
            },
        )
    }

    fn swish(x: FlexTensor, bias: FlexTensor, beta: FlexTensor) -> FlexTensor {
        f32_or_reference(
            [x, bias, beta],
            |[x, bias, beta]| tensor(cpu::swish(f32s(&x), f32s(&bias), f32s(&beta)), x.shape()),
            |[x, bias, beta]| reference::swish::<Self>(x, bias, beta),
        )
    }

    fn swish_backward(
        x: FlexTensor,
        bias: FlexTensor,
        beta: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        f32_or_reference(
            [x, bias, beta, grad],
            |[x, bias, beta, grad]| {
                let (grad_x, grad_bias, grad_beta) =
                    cpu::swish_backward(f32s(&x), f32s(&bias), f32s(&beta), f32s(&grad));
                (tensor(grad_x, x.shape()), tensor(grad_bias, bias.shape()), tensor(grad_beta, beta.shape()))
            },
            |[x, bias, beta, grad]| reference::swish_backward::<Self>(x, bias, beta, grad),
        )
    }

    fn matmul(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        let two_d = lhs.shape().num_dims() == 2 && rhs.shape().num_dims() == 2;
        if !two_d || lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
            return <Self as burn::backend::ops::FloatTensorOps<Self>>::float_matmul(lhs, rhs);
        }
        let ([m, k], [k2, n]) = (lhs.shape().dims::<2>(), rhs.shape().dims::<2>());
        assert_eq!(k, k2, "matmul: [{m}, {k}] × [{k2}, {n}]");
        let operand = |t: &FlexTensor| {
            let strides = t.layout().strides();
            let values: &[f32] = t.storage();
            // SAFETY: the layout's offset lies inside its storage.
            (unsafe { values.as_ptr().add(t.layout().start_offset()) }, strides[0], strides[1])
        };
        let ((a, a_rs, a_cs), (b, b_rs, b_cs)) = (operand(&lhs), operand(&rhs));
        let mut out = Vec::<f32>::with_capacity(m * n);
        // SAFETY: the operands are read through their own strides; `out` has
        // room for `m · n` values, all of which gemm writes (it does not read
        // `dst` when `read_dst` is false), before `set_len`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                a,
                a_cs,
                a_rs,
                b,
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm_parallelism(m, n, k),
            );
            out.set_len(m * n);
        }
        tensor(out, Shape::new([m, n]))
    }

    fn weight_norm(v: FlexTensor, g: FlexTensor) -> FlexTensor {
        f32_or_reference(
            [v, g],
            |[v, g]| tensor(cpu::weight_norm(f32s(&v), f32s(&g)), v.shape()),
            |[v, g]| reference::weight_norm::<Self>(v, g),
        )
    }

    fn weight_norm_backward(v: FlexTensor, g: FlexTensor, grad: FlexTensor) -> (FlexTensor, FlexTensor) {
        f32_or_reference(
            [v, g, grad],
            |[v, g, grad]| {
                let (grad_v, grad_g) = cpu::weight_norm_backward(f32s(&v), f32s(&g), f32s(&grad));
                (tensor(grad_v, v.shape()), tensor(grad_g, g.shape()))
            },
            |[v, g, grad]| reference::weight_norm_backward::<Self>(v, g, grad),
        )
    }

    fn residual(x: FlexTensor, h: FlexTensor, bias: FlexTensor) -> FlexTensor {
        f32_or_reference(
            [x, h, bias],
            |[x, h, bias]| tensor(cpu::residual(f32s(&x), f32s(&h), f32s(&bias)), x.shape()),
            |[x, h, bias]| reference::residual::<Self>(x, h, bias),
        )
    }

    fn residual_backward(grad: FlexTensor) -> (FlexTensor, FlexTensor) {
        f32_or_reference(
            [grad],
            |[grad]| {
                let features = grad.shape()[1];
                let (scaled, grad_bias) = cpu::residual_backward(f32s(&grad), features);
                (tensor(scaled, grad.shape()), tensor(grad_bias, Shape::new([features])))
            },
            |[grad]| reference::residual_backward::<Self>(grad),
        )
    }

    fn coupling_update(
        x: FlexTensor,
        s_raw: FlexTensor,
        t_raw: FlexTensor,
        s_scale: FlexTensor,
        t_scale: FlexTensor,
        mask: FlexTensor,
        direction: Direction,
    ) -> FlexTensor {
        f32_or_reference(
            [x, s_raw, t_raw, s_scale, t_scale, mask],
            |t| tensor(cpu::coupling_update(coupling(&t, direction)), t[0].shape()),
            |[x, s_raw, t_raw, s_scale, t_scale, mask]| {
                reference::coupling_update::<Self>(x, s_raw, t_raw, s_scale, t_scale, mask, direction)
            },
        )
    }

    fn coupling_update_backward(
        x: FlexTensor,
        s_raw: FlexTensor,
        t_raw: FlexTensor,
        s_scale: FlexTensor,
        t_scale: FlexTensor,
        mask: FlexTensor,
        direction: Direction,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
        f32_or_reference(
            [x, s_raw, t_raw, s_scale, t_scale, mask, grad],
            |t| {
                let g = cpu::coupling_update_backward(coupling(&t, direction), f32s(&t[6]));
                let (rows, features) = (t[0].shape(), t[3].shape());
                (
                    tensor(g.x, rows.clone()),
                    tensor(g.s_raw, rows.clone()),
                    tensor(g.t_raw, rows),
                    tensor(g.s_scale, features.clone()),
                    tensor(g.t_scale, features),
                )
            },
            |[x, s_raw, t_raw, s_scale, t_scale, mask, grad]| {
                let [x, s_raw, t_raw, s_scale, t_scale] = reference::coupling_update_backward::<Self>(
                    x, s_raw, t_raw, s_scale, t_scale, mask, direction, grad,
                );
                (x, s_raw, t_raw, s_scale, t_scale)
            },
        )
    }

    fn coupling_log_scale(s_raw: FlexTensor, s_scale: FlexTensor, mask: FlexTensor) -> FlexTensor {
        f32_or_reference(
            [s_raw, s_scale, mask],
            |[s_raw, s_scale, mask]| {
                let rows = s_raw.shape()[0];
                tensor(cpu::coupling_log_scale(f32s(&s_raw), f32s(&s_scale), f32s(&mask)), Shape::new([rows]))
            },
            |[s_raw, s_scale, mask]| reference::coupling_log_scale::<Self>(s_raw, s_scale, mask),
        )
    }

    fn coupling_log_scale_backward(
        s_raw: FlexTensor,
        s_scale: FlexTensor,
        mask: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        f32_or_reference(
            [s_raw, s_scale, mask, grad],
            |[s_raw, s_scale, mask, grad]| {
                let (g_raw, g_scale) =
                    cpu::coupling_log_scale_backward(f32s(&s_raw), f32s(&s_scale), f32s(&mask), f32s(&grad));
                (tensor(g_raw, s_raw.shape()), tensor(g_scale, s_scale.shape()))
            },
            |[s_raw, s_scale, mask, grad]| reference::coupling_log_scale_backward::<Self>(s_raw, s_scale, mask, grad),
        )
    }

    fn coupling_stack(
        x: FlexTensor,
        params: FlexTensor,
        layout: StackLayout,
        precision: ProductPrecision,
    ) -> Option<FlexTensor> {
        coupling_stack_with(x, params, layout, precision, false).map(|(output, _)| output)
    }

    fn coupling_stack_taped(
        x: FlexTensor,
        params: FlexTensor,
        layout: StackLayout,
        precision: ProductPrecision,
    ) -> Option<(FlexTensor, FlexTensor)> {
        coupling_stack_with(x, params, layout, precision, true)
    }

    fn coupling_stack_backward(
        params: FlexTensor,
        tape: FlexTensor,
        grad: FlexTensor,
        layout: StackLayout,
        precision: ProductPrecision,
    ) -> (FlexTensor, FlexTensor) {
        let [params, tape, grad] = [params, tape, grad].map(|t| if t.is_contiguous() { t } else { t.to_contiguous() });
        let m = grad.shape()[0];
        let (grad_x, grad_params) = cpu::stack::backward(&layout, f32s(&params), f32s(&tape), f32s(&grad), precision);
        // The tape is read once: its memory serves the next step's forward.
        if tape.is_unique()
            && let Ok(values) = tape.into_data().try_into_vec::<f32>()
        {
            cpu::stack::recycle_tape(values);
        }
        (tensor(grad_x, Shape::new([m, layout.dim()])), tensor(grad_params, params.shape()))
    }
}

/// The slices of `[x, s_raw, t_raw, s_scale, t_scale, mask, ..]`.
fn coupling(t: &[FlexTensor], direction: Direction) -> cpu::Coupling<'_> {
    cpu::Coupling {
        x: f32s(&t[0]),
        s_raw: f32s(&t[1]),
        t_raw: f32s(&t[2]),
        s_scale: f32s(&t[3]),
        t_scale: f32s(&t[4]),
        mask: f32s(&t[5]),
        direction,
    }
}

/// Threads for a product of `m·n·k` multiply-adds: below burn-flex's
/// threshold the pool's overhead outweighs the split.
fn gemm_parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    #[cfg(feature = "parallel")]
    if m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192 {
        return gemm::Parallelism::Rayon(0);
    }
    let _ = (m, n, k);
    gemm::Parallelism::None
}

/// The fused stack's forward (and its tape when `taped`) on f32 tensors;
/// `None` for other dtypes (the model composes the stack then).
fn coupling_stack_with(
    x: FlexTensor,
    params: FlexTensor,
    layout: StackLayout,
    precision: ProductPrecision,
    taped: bool,
) -> Option<(FlexTensor, FlexTensor)> {
    if x.dtype() != DType::F32 || params.dtype() != DType::F32 {
        return None;
    }
    let [x, params] = [x, params].map(|t| if t.is_contiguous() { t } else { t.to_contiguous() });
    let m = x.shape()[0];
    let (output, tape) = cpu::stack::forward(&layout, f32s(&params), f32s(&x), taped, precision);
    let tape_len = tape.len();
    Some((tensor(output, Shape::new([m, layout.dim() + 1])), tensor(tape, Shape::new([tape_len]))))
}
