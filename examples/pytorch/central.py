"""The baseline for the PyTorch example: the same CNN, the same initial
weights, trained centrally on the union of the sites' training rows, scored
on the same held-out rows. Prints the held-out accuracy on its last line.

    python central.py --data ../data/digits.csv --epochs 15
"""

import argparse

import torch

from model import Net, fit, load_rows, score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    net = Net()  # the same initial weights as init_model.py --seed 0
    x, y = load_rows(a.data, "train")
    fit(net, x, y, a.epochs, a.batch_size, a.lr, 0.0, a.seed)
    tx, ty = load_rows(a.data, "test")
    correct, loss = score(net, tx, ty)
    print(f"central: {len(y)} training rows, held-out loss {loss:.4f}")
    print(f"{correct / len(ty):.4f}")


if __name__ == "__main__":
    main()
