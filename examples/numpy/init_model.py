"""Writes the initial global model of the NumPy example: a small MLP for the
8x8 digits (64 pixels -> hidden ReLU layer -> 10 classes), tensors named as
PyTorch's nn.Linear names them, saved with safetensors' NumPy API.

    python init_model.py --out init.safetensors [--hidden 64] [--seed 0] [--dtype float16]

A float16 model is federated as such: Confide aggregates in f32 and serves,
checkpoints and hands it to train.py in float16 (half the download).

The coordinator serves this file as the federation's starting point:
    [model]
    kind = "file"
    path = "init.safetensors"
"""

import argparse

import numpy as np
from safetensors.numpy import save_file

FEATURES = 64
CLASSES = 10


def init_model(hidden: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    # He initialisation for the ReLU layer, Glorot-like for the softmax head.
    return {
        "fc1.weight": (rng.standard_normal((hidden, FEATURES)) * np.sqrt(2.0 / FEATURES)).astype(np.float32),
        "fc1.bias": np.zeros(hidden, dtype=np.float32),
        "fc2.weight": (rng.standard_normal((CLASSES, hidden)) * np.sqrt(1.0 / hidden)).astype(np.float32),
        "fc2.bias": np.zeros(CLASSES, dtype=np.float32),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="init.safetensors")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    a = p.parse_args()
    model = {k: v.astype(a.dtype) for k, v in init_model(a.hidden, a.seed).items()}
    save_file(model, a.out)
    n = sum(t.size for t in model.values())
    print(f"wrote {a.out}: {len(model)} tensors, {n} parameters ({a.dtype})")


if __name__ == "__main__":
    main()
