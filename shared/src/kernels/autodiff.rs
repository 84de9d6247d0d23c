//! [`FusedKernels`] under autodiff: the inner backend's fused forward, and
//! backward steps that call its fused backward.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use super::{AdamWStep, FusedKernels, StackLayout};
use crate::decoder::ProductPrecision;
use crate::flow::Direction;

/// Registers `grad` for a parent, if it is tracked.
fn register<B: FusedKernels>(grads: &mut Gradients, parent: Option<NodeId>, grad: FloatTensor<B>) {
    if let Some(id) = parent {
        grads.register::<B>(id, grad);
    }
}

/// Records one fused op on the autodiff graph: runs `forward` on the inner
/// backend's primitives and, when any input is tracked, keeps
/// `state(inputs)` for the op's `backward` step.
fn record<B, C, BO, const N: usize>(
    backward: BO,
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    state: impl FnOnce([FloatTensor<B>; N]) -> BO::State,
    forward: impl Fn([FloatTensor<B>; N]) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: FusedKernels,
    C: CheckpointStrategy,
    BO: Backward<B, N>,
{
    let (primitives, nodes): (Vec<_>, Vec<_>) = inputs.into_iter().map(|t| t.into_parts()).unzip();
    let primitives: [FloatTensor<B>; N] = primitives.try_into().expect("one primitive per input");
    let nodes = nodes.try_into().expect("one node per input");
    match backward.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let output = forward(primitives.clone());
            prep.finish(state(primitives), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(primitives)),
    }
}

impl<B: FusedKernels, C: CheckpointStrategy> FusedKernels for Autodiff<B, C> {
    /// The inner backend's update on the inner tensors (an optimiser's step
    /// is not differentiated), its results untracked.
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        grad_scale: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        use burn::backend::AutodiffBackend;
        let [param, grad, moment_1, moment_2, grad_scale] =
            [param, grad, moment_1, moment_2, grad_scale].map(<Self as AutodiffBackend>::inner);
        let (p, m, v) = B::adamw_update(param, grad, moment_1, moment_2, grad_scale, step);
        (Self::from_inner(p), Self::from_inner(m), Self::from_inner(v))
    }

    fn swish(x: FloatTensor<Self>, bias: FloatTensor<Self>, beta: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwishBackward;

        impl<B: FusedKernels> Backward<B, 3> for SwishBackward {
            /// The forward inputs `x`, `bias`, `β`.
            type State = [FloatTensor<B>; 3];

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_bias, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let [x, bias, beta] = ops.state;
                let (grad_x, grad_bias, grad_beta) = B::swish_backward(x, bias, beta, grad);
                register::<B>(grads, node_x.map(|n| n.id), grad_x);
                register::<B>(grads, node_bias.map(|n| n.id), grad_bias);
                register::<B>(grads, node_beta.map(|n| n.id), grad_beta);
            }
        }

        record::<B, C, _, 3>(SwishBackward, [x, bias, beta], |inputs| inputs, |[x, bias, beta]| B::swish(x, bias, beta))
    }

    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatmulBackward;

        impl<B: FusedKernels> Backward<B, 2> for MatmulBackward {
            /// The forward operands.
            type State = [FloatTensor<B>; 2];

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_lhs, node_rhs] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let [lhs, rhs] = ops.state;
                // Transposes are strided views; the products read them in place.
                if let Some(node) = node_lhs {
                    grads.register::<B>(node.id, B::matmul(grad.clone(), B::float_transpose(rhs)));
                }
                if let Some(node) = node_rhs {
                    grads.register::<B>(node.id, B::matmul(B::float_transpose(lhs), grad));
                }
            }
        }

        record::<B, C, _, 2>(MatmulBackward, [lhs, rhs], |inputs| inputs, |[lhs, rhs]| B::matmul(lhs, rhs))
    }

    fn weight_norm(v: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct WeightNormBackward;

        impl<B: FusedKernels> Backward<B, 2> for WeightNormBackward {
            /// The forward inputs `v` and `g`.
            type State = [FloatTensor<B>; 2];

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_v, node_g] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let [v, g] = ops.state;
                let (grad_v, grad_g) = B::weight_norm_backward(v, g, grad);
                register::<B>(grads, node_v.map(|n| n.id), grad_v);
                register::<B>(grads, node_g.map(|n| n.id), grad_g);
            }
        }

        record::<B, C, _, 2>(WeightNormBackward, [v, g], |inputs| inputs, |[v, g]| B::weight_norm(v, g))
    }

    fn residual(x: FloatTensor<Self>, h: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ResidualBackward;

        impl<B: FusedKernels> Backward<B, 3> for ResidualBackward {
            /// Nothing: the gradients depend on the output gradient alone.
            type State = ();

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_h, node_bias] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (scaled, grad_bias) = B::residual_backward(grad);
                register::<B>(grads, node_x.map(|n| n.id), scaled.clone());
                register::<B>(grads, node_h.map(|n| n.id), scaled);
                register::<B>(grads, node_bias.map(|n| n.id), grad_bias);
            }
        }

        record::<B, C, _, 3>(ResidualBackward, [x, h, bias], |_| (), |[x, h, bias]| B::residual(x, h, bias))
    }

    fn coupling_update(
        x: FloatTensor<Self>,
        s_raw: FloatTensor<Self>,
        t_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        t_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        direction: Direction,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct CouplingBackward;

        impl<B: FusedKernels> Backward<B, 6> for CouplingBackward {
            /// The forward inputs `[x, s_raw, t_raw, s_scale, t_scale, mask]`
            /// and the direction.
            type State = ([FloatTensor<B>; 6], Direction);

            fn backward(self, ops: Ops<Self::State, 6>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_s_raw, node_t_raw, node_s_scale, node_t_scale, _mask] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let ([x, s_raw, t_raw, s_scale, t_scale, mask], direction) = ops.state;
                let (gx, gs, gt, gs_scale, gt_scale) =
                    B::coupling_update_backward(x, s_raw, t_raw, s_scale, t_scale, mask, direction, grad);
                register::<B>(grads, node_x.map(|n| n.id), gx);
                register::<B>(grads, node_s_raw.map(|n| n.id), gs);
                register::<B>(grads, node_t_raw.map(|n| n.id), gt);
                register::<B>(grads, node_s_scale.map(|n| n.id), gs_scale);
                register::<B>(grads, node_t_scale.map(|n| n.id), gt_scale);
            }
        }

        record::<B, C, _, 6>(
            CouplingBackward,
            [x, s_raw, t_raw, s_scale, t_scale, mask],
            |inputs| (inputs, direction),
            |[x, s_raw, t_raw, s_scale, t_scale, mask]| {
                B::coupling_update(x, s_raw, t_raw, s_scale, t_scale, mask, direction)
            },
        )
    }

    fn coupling_log_scale(
        s_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LogScaleBackward;

        impl<B: FusedKernels> Backward<B, 3> for LogScaleBackward {
            /// The forward inputs `s_raw`, `s_scale`, `mask`.
            type State = [FloatTensor<B>; 3];

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_s_raw, node_s_scale, _mask] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let [s_raw, s_scale, mask] = ops.state;
                let (g_raw, g_scale) = B::coupling_log_scale_backward(s_raw, s_scale, mask, grad);
                register::<B>(grads, node_s_raw.map(|n| n.id), g_raw);
                register::<B>(grads, node_s_scale.map(|n| n.id), g_scale);
            }
        }

        record::<B, C, _, 3>(
            LogScaleBackward,
            [s_raw, s_scale, mask],
            |inputs| inputs,
            |[s_raw, s_scale, mask]| B::coupling_log_scale(s_raw, s_scale, mask),
        )
    }

    fn coupling_stack(
        x: FloatTensor<Self>,
        params: FloatTensor<Self>,
        layout: StackLayout,
        precision: ProductPrecision,
    ) -> Option<FloatTensor<Self>> {
        #[derive(Debug)]
        struct StackBackward {
            layout: StackLayout,
            precision: ProductPrecision,
        }

        impl<B: FusedKernels> Backward<B, 2> for StackBackward {
            /// The parameters and the forward's tape.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_params] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (params, tape) = ops.state;
                let (grad_x, grad_params) = B::coupling_stack_backward(params, tape, grad, self.layout, self.precision);
                register::<B>(grads, node_x.map(|n| n.id), grad_x);
                register::<B>(grads, node_params.map(|n| n.id), grad_params);
            }
        }

        let (x, node_x) = x.into_parts();
        let (params, node_params) = params.into_parts();
        // An op whose backend has no kernel is never recorded (the
        // preparation is dropped unfinished): the caller composes it instead.
        let prep = StackBackward { layout, precision }.prepare::<C>([node_x, node_params]);
        match prep.compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (output, tape) = B::coupling_stack_taped(x, params.clone(), layout, precision)?;
                Some(prep.finish((params, tape), output))
            }
            OpsKind::UnTracked(prep) => Some(prep.finish(B::coupling_stack(x, params, layout, precision)?)),
        }
    }
}
