#!/usr/bin/env python3
"""Times the authors' PyTorch RG-Flow at the config of `trainer bench`, for a
side-by-side comparison on the same machine.

    git clone https://github.com/hongyehu/RG-Flow /tmp/RG-Flow
    pip install torch==2.5.1 numpy
    python3 bench/pytorch_reference.py /tmp/RG-Flow/code [--threads 2] [--cuda 0]

It builds their MERA of RNVP / ResNetReshape networks exactly as their
`main.build_mera`, jitters every parameter by 0.02 (as `trainer bench` does:
the zero-initialised final scales would make every coupling the identity),
and times their training step (`logit_transform` -> `log_prob` -> backward ->
`clip_grad_norm_` -> AdamW) and `flow.sample` on batches of uniform images,
on the CPU or (`--cuda N`, their own flag) on a GPU, synchronised before
each clock read.
Modules their data and plotting code imports but the model does not need
(h5py, PIL, torchvision, matplotlib, skimage) are stubbed, so only torch and numpy are required.
"""

import argparse
import sys
import time
import types


def stub_modules():
    for name in ["h5py", "PIL", "PIL.Image", "torchvision", "torchvision.datasets",
                 "torchvision.transforms", "matplotlib", "matplotlib.pyplot"]:
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    sys.modules["PIL"].Image = sys.modules["PIL.Image"]
    sys.modules["torchvision"].datasets = sys.modules["torchvision.datasets"]
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
    # Their plotting helpers (skimage, matplotlib), imported by `main`.
    support = types.ModuleType("utils_support")
    support.my_tight_layout = support.plot_samples_np = None
    sys.modules["utils_support"] = support
    # Base classes their data code derives from at import time.
    sys.modules["torchvision.datasets"].VisionDataset = object


def main():
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_argument("authors_code", help="the `code/` folder of hongyehu/RG-Flow")
    cli.add_argument("--threads", type=int, default=2)
    cli.add_argument("--batch", type=int, default=64)
    cli.add_argument("--steps", type=int, default=10, help="timed training steps (after 2 warm-up)")
    cli.add_argument("--sample-batches", type=int, default=5, help="timed sampling batches (after 1 warm-up)")
    cli.add_argument("--nlayers", default="4,3,2,1")
    cli.add_argument("--nresblocks", default="2")
    cli.add_argument("--nmlp", default="2")
    cli.add_argument("--nhidden", default="128")
    cli.add_argument("--cuda", default="", help="their --cuda: GPU indices (e.g. 0); empty for the CPU")
    opts = cli.parse_args()

    # Their `args` module parses sys.argv when imported.
    sys.argv = ["main.py", "--L", "32", "--nchannels", "3", "--prior", "laplace",
                "--nlayers", opts.nlayers, "--nresblocks", opts.nresblocks,
                "--nmlp", opts.nmlp, "--nhidden", opts.nhidden,
                "--batch_size", str(opts.batch), "--out_dir", ""]
    if opts.cuda:
        sys.argv += ["--cuda", opts.cuda]
    sys.path.insert(0, opts.authors_code)
    stub_modules()

    import torch
    from torch.nn.utils import clip_grad_norm_

    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    import main as authors  # builds nothing at import: training runs under __main__
    from utils import logit_transform
    from args import args as their_args

    device = their_args.device

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    flow = authors.build_mera()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.02 * torch.randn_like(p))
    params = [p for p in flow.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-2)
    nparams = sum(p.numel() for p in params)
    print(f"authors' PyTorch {torch.__version__}: L 32 C 3 nlayers {opts.nlayers} nresblocks "
          f"{opts.nresblocks} nmlp {opts.nmlp} nhidden {opts.nhidden}; {nparams} parameters; "
          f"batch {opts.batch}; {torch.get_num_threads()} threads; device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

    num_dims = 3 * 32 * 32
    elapsed = 0.0
    for step in range(opts.steps + 2):
        x01 = torch.rand(opts.batch, 3, 32, 32, device=device)
        sync()
        t0 = time.perf_counter()
        x, ldj_logit = logit_transform(x01)
        loss = -(flow.log_prob(x) + ldj_logit).mean() / num_dims
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(params, 1.0)
        optimizer.step()
        sync()
        if step >= 2:
            elapsed += time.perf_counter() - t0
    ms = elapsed / opts.steps * 1e3
    print(f"train:  {opts.batch / ms * 1e3:.1f} images/s  ({ms:.0f} ms/step)")

    if opts.sample_batches == 0:
        # Training only, as `trainer bench --sample-batches 0`.
        return
    flow.train(False)
    elapsed = 0.0
    with torch.no_grad():
        for batch in range(opts.sample_batches + 1):
            sync()
            t0 = time.perf_counter()
            flow.sample(opts.batch)
            sync()
            if batch >= 1:
                elapsed += time.perf_counter() - t0
    ms = elapsed / opts.sample_batches * 1e3
    print(f"sample: {opts.batch / ms * 1e3:.1f} images/s  ({ms:.0f} ms per batch of {opts.batch})")


if __name__ == "__main__":
    main()
