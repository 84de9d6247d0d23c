//! [`FusedKernels`] under autodiff: the inner backend's fused forward, and a
//! backward step that calls its fused backward.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use super::FusedKernels;

impl<B: FusedKernels, C: CheckpointStrategy> FusedKernels for Autodiff<B, C> {
    fn swish(x: FloatTensor<Self>, beta: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwishBackward;

        impl<B: FusedKernels> Backward<B, 2> for SwishBackward {
            /// The forward inputs `x` and `β`.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, beta) = ops.state;
                let (grad_x, grad_beta) = B::swish_backward(x, beta, grad);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, grad_x);
                }
                if let Some(node) = node_beta {
                    grads.register::<B>(node.id, grad_beta);
                }
            }
        }

        let (x, x_node) = x.into_parts();
        let (beta, beta_node) = beta.into_parts();
        match SwishBackward.prepare::<C>([x_node, beta_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::swish(x.clone(), beta.clone());
                prep.finish((x, beta), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::swish(x, beta)),
        }
    }
}
