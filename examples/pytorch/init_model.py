"""Writes the PyTorch example's initial global model (the CNN of model.py,
PyTorch's default initialisation from a fixed seed) with safetensors.torch.

    python init_model.py --out init.safetensors [--seed 0] [--dtype float32|float16|bfloat16]

A half-precision file is accepted too: Confide aggregates in f32 and writes
the model back in the file's dtype.
"""

import argparse

import torch
from safetensors.torch import save_file

from model import Net


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="init.safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    a = p.parse_args()
    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    state = {k: v.detach().to(dtype).contiguous() for k, v in Net().state_dict().items()}
    save_file(state, a.out)
    n = sum(t.numel() for t in state.values())
    print(f"wrote {a.out}: {len(state)} tensors, {n} parameters ({a.dtype})")


if __name__ == "__main__":
    main()
