"""The PyTorch example's model and data, shared by init_model.py, train.py
and central.py: a small CNN for the 8x8 digits, and each site's shard."""

import numpy as np
import torch
from torch import nn

HOLDOUT = 0.2
SPLIT_SEED = 0


class Net(nn.Module):
    """conv 3x3 (16) -> conv 3x3 (32) -> max-pool 2 -> 64 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def load_rows(path: str, part: str, index: int = 0, count: int = 1):
    """Rows of `part` ("train" or "test") for site `index` of `count`: images
    (N, 1, 8, 8) in [0, 1] and labels. The same fixed shuffle as the NumPy
    example: 20 % held out, site i takes every count-th row of each part, so
    the sites' rows together are exactly the rows of a central run."""
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
    x, y = raw[:, :-1] / 16.0, raw[:, -1].astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test = int(round(HOLDOUT * len(y)))
    rows = (order[:n_test] if part == "test" else order[n_test:])[index::count]
    return torch.from_numpy(x[rows]).reshape(-1, 1, 8, 8), torch.from_numpy(y[rows])


def fit(net: Net, x, y, epochs: int, batch_size: int, lr: float, l2: float, seed: int) -> float:
    """Minibatch SGD with momentum; the mean loss of the last epoch."""
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g
    )
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=l2)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    net.train()
    last = 0.0
    for _ in range(epochs):
        last = 0.0
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            (loss / len(yb)).backward()
            opt.step()
            last += loss.item()
    return last / max(len(y), 1)


@torch.no_grad()
def score(net: Net, x, y):
    """(correct, mean loss) of `net` on the rows."""
    net.eval()
    logits = net(x)
    correct = int((logits.argmax(dim=1) == y).sum())
    loss = float(nn.functional.cross_entropy(logits, y)) if len(y) else 0.0
    return correct, loss
