//! [`FusedKernels`] under autodiff: the inner backend's fused forward, and
//! backward steps that call its fused backward.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use super::FusedKernels;

/// Registers `grad` for a parent, if it is tracked.
fn register<B: FusedKernels>(grads: &mut Gradients, parent: Option<NodeId>, grad: FloatTensor<B>) {
    if let Some(id) = parent {
        grads.register::<B>(id, grad);
    }
}

impl<B: FusedKernels, C: CheckpointStrategy> FusedKernels for Autodiff<B, C> {
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

        let (x, n_x) = x.into_parts();
        let (bias, n_bias) = bias.into_parts();
        let (beta, n_beta) = beta.into_parts();
        match SwishBackward.prepare::<C>([n_x, n_bias, n_beta]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::swish(x.clone(), bias.clone(), beta.clone());
                prep.finish([x, bias, beta], output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::swish(x, bias, beta)),
        }
    }

    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatmulBackward;

        impl<B: FusedKernels> Backward<B, 2> for MatmulBackward {
            /// The forward operands.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_lhs, node_rhs] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (lhs, rhs) = ops.state;
                // Transposes are strided views; the products read them in place.
                if let Some(node) = node_lhs {
                    grads.register::<B>(node.id, B::matmul(grad.clone(), B::float_transpose(rhs)));
                }
                if let Some(node) = node_rhs {
                    grads.register::<B>(node.id, B::matmul(B::float_transpose(lhs), grad));
                }
            }
        }

        let (lhs, n_lhs) = lhs.into_parts();
        let (rhs, n_rhs) = rhs.into_parts();
        match MatmulBackward.prepare::<C>([n_lhs, n_rhs]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::matmul(lhs.clone(), rhs.clone());
                prep.finish((lhs, rhs), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::matmul(lhs, rhs)),
        }
    }

    fn weight_norm(v: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct WeightNormBackward;

        impl<B: FusedKernels> Backward<B, 2> for WeightNormBackward {
            /// The forward inputs `v` and `g`.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_v, node_g] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (v, g) = ops.state;
                let (grad_v, grad_g) = B::weight_norm_backward(v, g, grad);
                register::<B>(grads, node_v.map(|n| n.id), grad_v);
                register::<B>(grads, node_g.map(|n| n.id), grad_g);
            }
        }

        let (v, n_v) = v.into_parts();
        let (g, n_g) = g.into_parts();
        match WeightNormBackward.prepare::<C>([n_v, n_g]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::weight_norm(v.clone(), g.clone());
                prep.finish((v, g), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::weight_norm(v, g)),
        }
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

        let (x, n_x) = x.into_parts();
        let (h, n_h) = h.into_parts();
        let (bias, n_bias) = bias.into_parts();
        match ResidualBackward.prepare::<C>([n_x, n_h, n_bias]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((), B::residual(x, h, bias)),
            OpsKind::UnTracked(prep) => prep.finish(B::residual(x, h, bias)),
        }
    }

    fn coupling_update(
        x: FloatTensor<Self>,
        s_raw: FloatTensor<Self>,
        t_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        t_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        inverse: bool,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct CouplingBackward;

        impl<B: FusedKernels> Backward<B, 6> for CouplingBackward {
            /// The forward inputs `[x, s_raw, t_raw, s_scale, t_scale, mask]`
            /// and the direction.
            type State = ([FloatTensor<B>; 6], bool);

            fn backward(self, ops: Ops<Self::State, 6>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_s_raw, node_t_raw, node_s_scale, node_t_scale, _mask] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let ([x, s_raw, t_raw, s_scale, t_scale, mask], inverse) = ops.state;
                let (gx, gs, gt, gs_scale, gt_scale) =
                    B::coupling_update_backward(x, s_raw, t_raw, s_scale, t_scale, mask, inverse, grad);
                register::<B>(grads, node_x.map(|n| n.id), gx);
                register::<B>(grads, node_s_raw.map(|n| n.id), gs);
                register::<B>(grads, node_t_raw.map(|n| n.id), gt);
                register::<B>(grads, node_s_scale.map(|n| n.id), gs_scale);
                register::<B>(grads, node_t_scale.map(|n| n.id), gt_scale);
            }
        }

        let (inputs, nodes): (Vec<_>, Vec<_>) =
            [x, s_raw, t_raw, s_scale, t_scale, mask].into_iter().map(|t| t.into_parts()).unzip();
        let inputs: [FloatTensor<B>; 6] = inputs.try_into().expect("six inputs");
        let nodes = nodes.try_into().expect("six inputs");
        let run = |[x, s_raw, t_raw, s_scale, t_scale, mask]: [FloatTensor<B>; 6]| {
            B::coupling_update(x, s_raw, t_raw, s_scale, t_scale, mask, inverse)
        };
        match CouplingBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = run(inputs.clone());
                prep.finish((inputs, inverse), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(run(inputs)),
        }
    }

    fn coupling_log_scale(s_raw: FloatTensor<Self>, s_scale: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
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

        let (s_raw, n_raw) = s_raw.into_parts();
        let (s_scale, n_scale) = s_scale.into_parts();
        let (mask, n_mask) = mask.into_parts();
        match LogScaleBackward.prepare::<C>([n_raw, n_scale, n_mask]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::coupling_log_scale(s_raw.clone(), s_scale.clone(), mask.clone());
                prep.finish([s_raw, s_scale, mask], output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::coupling_log_scale(s_raw, s_scale, mask)),
        }
    }
}
