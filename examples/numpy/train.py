"""A Confide site's training code in NumPy only: a small MLP (64 -> hidden ->
10, ReLU, softmax cross-entropy) on this site's shard of the 8x8 digits.

confide-site runs it once per call, with the contract's environment
(docs/site.md):

    CONFIDE_MODE          train | evaluate
    CONFIDE_GLOBAL_MODEL  the global model (safetensors) to start from
    CONFIDE_OUTPUT_MODEL  train: where to write the trained model
    CONFIDE_METRICS       where to write {"num_examples", "loss", "correct", "total"}
    CONFIDE_DATA          the site's --data (here: digits.csv)
    CONFIDE_EPOCHS, CONFIDE_BATCH_SIZE, CONFIDE_LEARNING_RATE, CONFIDE_L2, CONFIDE_SEED

The data is this script's business. Each site keeps its own shard: rows are
shuffled once with a fixed seed, 20 % are held out for evaluation, and site i
of n (SITE_INDEX / SITE_COUNT, or --shard i/n) takes every n-th row of each
part, so the union of the sites' held-out rows is the whole held-out set.
"""

import argparse
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

HOLDOUT = 0.2
SPLIT_SEED = 0


def env(name: str, default=None):
    v = os.environ.get(name, default)
    if v is None:
        sys.exit(f"train.py: {name} is not set (run me from confide-site --train-command)")
    return v


def load_shard(path: str, index: int, count: int, part: str):
    """This site's rows of `part` ("train" or "test"): features in [0, 1], labels."""
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
    x, y = raw[:, :-1] / 16.0, raw[:, -1].astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test = int(round(HOLDOUT * len(y)))
    rows = order[:n_test] if part == "test" else order[n_test:]
    rows = rows[index::count]
    return x[rows], y[rows]


def forward(params: dict, x: np.ndarray):
    h = np.maximum(x @ params["fc1.weight"].T + params["fc1.bias"], 0.0)
    logits = h @ params["fc2.weight"].T + params["fc2.bias"]
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return h, p


def cross_entropy(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))


def train(params: dict, x, y, epochs: int, batch: int, lr: float, l2: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        losses = []
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            b = order[start : start + batch]
            xb, yb = x[b], y[b]
            h, p = forward(params, xb)
            losses.append(cross_entropy(p, yb).sum())
            # Backward pass of softmax cross-entropy through the two layers.
            g = p.copy()
            g[np.arange(len(yb)), yb] -= 1.0
            g /= len(yb)
            grads = {
                "fc2.weight": g.T @ h + l2 * params["fc2.weight"],
                "fc2.bias": g.sum(axis=0),
            }
            gh = (g @ params["fc2.weight"]) * (h > 0)
            grads["fc1.weight"] = gh.T @ xb + l2 * params["fc1.weight"]
            grads["fc1.bias"] = gh.sum(axis=0)
            for k in params:
                params[k] -= lr * grads[k]
    return float(np.sum(losses) / len(y))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shard", help="i/n: this site's shard (default: $SITE_INDEX/$SITE_COUNT, else 0/1)")
    p.add_argument("--data", help="digits.csv (default: $CONFIDE_DATA)")
    a = p.parse_args()
    shard = a.shard or f"{os.environ.get('SITE_INDEX', '0')}/{os.environ.get('SITE_COUNT', '1')}"
    index, count = (int(v) for v in shard.split("/"))
    data = a.data or env("CONFIDE_DATA")
    mode = env("CONFIDE_MODE")

    stored = load_file(env("CONFIDE_GLOBAL_MODEL"))
    # Compute in float32 whatever the file holds; write back in its dtypes.
    dtypes = {k: v.dtype for k, v in stored.items()}
    params = {k: v.astype(np.float32) for k, v in stored.items()}

    if mode == "train":
        x, y = load_shard(data, index, count, "train")
        loss = train(
            params,
            x,
            y,
            epochs=int(env("CONFIDE_EPOCHS", "1")),
            batch=int(env("CONFIDE_BATCH_SIZE", "32")),
            lr=float(env("CONFIDE_LEARNING_RATE", "0.1")),
            l2=float(env("CONFIDE_L2", "0")),
            seed=int(env("CONFIDE_SEED", "0")),
        )
        save_file({k: v.astype(dtypes[k]) for k, v in params.items()}, env("CONFIDE_OUTPUT_MODEL"))
        metrics = {"num_examples": int(len(y)), "loss": loss}
    elif mode == "evaluate":
        x, y = load_shard(data, index, count, "test")
        _, probs = forward(params, x)
        correct = int((probs.argmax(axis=1) == y).sum())
        metrics = {
            "num_examples": int(len(y)),
            "total": int(len(y)),
            "correct": correct,
            "loss": float(cross_entropy(probs, y).mean()) if len(y) else 0.0,
        }
    else:
        sys.exit(f"train.py: unknown CONFIDE_MODE {mode!r} (train or evaluate)")
    with open(env("CONFIDE_METRICS"), "w") as f:
        json.dump(metrics, f)
    print(f"site {index}/{count} {mode}: {metrics}", file=sys.stderr)


if __name__ == "__main__":
    main()
