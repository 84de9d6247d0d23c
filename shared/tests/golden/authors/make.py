#!/usr/bin/env python3
"""Writes the authors'-format checkpoints `trainer import` is tested on, from
the golden state dict `../ref_l8_laplace.safetensors` (their weights and test
vectors):

- `ref_l8_laplace.state`: what their `main.py` saves every epoch,
  `{'flow': state_dict, 'optimizer': AdamW state}`, float32 (their default
  dtype), keys under the `module.net.` prefix their multi-GPU wrapper adds;
- `ref_l8_laplace.pth`: a bare `torch.save(state_dict)` in float64;
- `ref_l8_laplace.args.json`: their command-line arguments for that model.

    pip install torch==2.5.1 safetensors numpy
    python3 shared/tests/golden/authors/make.py
"""
import json
import os

import torch
from safetensors.torch import load_file

here = os.path.dirname(os.path.abspath(__file__))
golden = load_file(os.path.join(here, "..", "ref_l8_laplace.safetensors"))
state = {k: v for k, v in golden.items() if not k.startswith("test.")}

flow = {"module.net." + k: v.float().contiguous() for k, v in state.items()}
params = [torch.nn.Parameter(v.clone()) for k, v in flow.items() if "mask" not in k and "saved_" not in k]
optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-5)
for p in params:
    p.grad = torch.ones_like(p)
optimizer.step()
torch.save({"flow": flow, "optimizer": optimizer.state_dict()}, os.path.join(here, "ref_l8_laplace.state"))

torch.save({k: v.double().contiguous() for k, v in state.items()}, os.path.join(here, "ref_l8_laplace.pth"))

args = {"data": "celeba32", "L": 8, "nchannels": 3, "prior": "laplace", "subnet": "rnvp", "kernel_size": 4,
        "nlayers": "1", "nresblocks": "1", "nmlp": "1", "nhidden": "16", "dtype": "float32", "batch_size": 64,
        "lr": 0.001, "weight_decay": 5e-05, "epoch": 500, "clip_grad": 1.0}
with open(os.path.join(here, "ref_l8_laplace.args.json"), "w") as f:
    json.dump(args, f, indent=1)
    f.write("\n")
