"""A Confide site's training code in PyTorch: the CNN of model.py on this
site's shard of the 8x8 digits. confide-site calls it with the contract's
environment (docs/site.md): CONFIDE_MODE (train | evaluate),
CONFIDE_GLOBAL_MODEL, CONFIDE_OUTPUT_MODEL (train), CONFIDE_METRICS,
CONFIDE_DATA (digits.csv), CONFIDE_EPOCHS, CONFIDE_BATCH_SIZE,
CONFIDE_LEARNING_RATE, CONFIDE_L2, CONFIDE_SEED.

The shard is SITE_INDEX / SITE_COUNT (or --shard i/n).
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

from model import Net, fit, load_rows, score


def env(name: str, default=None) -> str:
    v = os.environ.get(name, default)
    if v is None:
        sys.exit(f"train.py: {name} is not set (run me from confide-site --train-command)")
    return v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shard", help="i/n (default: $SITE_INDEX/$SITE_COUNT, else 0/1)")
    p.add_argument("--data", help="digits.csv (default: $CONFIDE_DATA)")
    a = p.parse_args()
    shard = a.shard or f"{os.environ.get('SITE_INDEX', '0')}/{os.environ.get('SITE_COUNT', '1')}"
    index, count = (int(v) for v in shard.split("/"))
    data = a.data or env("CONFIDE_DATA")
    mode = env("CONFIDE_MODE")
    torch.set_num_threads(1)  # several sites share a machine in the tests

    state = load_file(env("CONFIDE_GLOBAL_MODEL"))
    # Train in float32 whatever the file holds; write back in its dtypes.
    dtypes = {k: v.dtype for k, v in state.items()}
    net = Net()
    net.load_state_dict({k: v.float() for k, v in state.items()})

    if mode == "train":
        x, y = load_rows(data, "train", index, count)
        seed = int(env("CONFIDE_SEED", "0"))
        torch.manual_seed(seed)
        loss = fit(
            net,
            x,
            y,
            epochs=int(env("CONFIDE_EPOCHS", "1")),
            batch_size=int(env("CONFIDE_BATCH_SIZE", "32")),
            lr=float(env("CONFIDE_LEARNING_RATE", "0.05")),
            l2=float(env("CONFIDE_L2", "0")),
            seed=seed,
        )
        out = {k: v.detach().to(dtypes[k]).contiguous() for k, v in net.state_dict().items()}
        save_file(out, env("CONFIDE_OUTPUT_MODEL"))
        metrics = {"num_examples": len(y), "loss": loss}
    elif mode == "evaluate":
        x, y = load_rows(data, "test", index, count)
        correct, loss = score(net, x, y)
        metrics = {"num_examples": len(y), "total": len(y), "correct": correct, "loss": loss}
    else:
        sys.exit(f"train.py: unknown CONFIDE_MODE {mode!r} (train or evaluate)")
    with open(env("CONFIDE_METRICS"), "w") as f:
        json.dump(metrics, f)
    print(f"site {index}/{count} {mode}: {metrics}", file=sys.stderr)


if __name__ == "__main__":
    main()
