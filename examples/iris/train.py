"""Train IrisNet on scikit-learn's iris data and save its weights as safetensors.

    python -m examples.iris.train [--out iris.safetensors]      # from the repository root

No download: the data ships with scikit-learn. Prints the accuracy on a held-out fifth.
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

from examples.iris.iris_model import IrisNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="iris.safetensors")
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_iris()
    train_x, test_x, train_y, test_y = train_test_split(
        data.data, data.target, test_size=0.2, random_state=0, stratify=data.target
    )
    x, y = torch.tensor(train_x, dtype=torch.float32), torch.tensor(train_y)
    net = IrisNet()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(args.epochs):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        predicted = net(torch.tensor(test_x, dtype=torch.float32)).argmax(-1)
    accuracy = float((predicted == torch.tensor(test_y)).float().mean())
    save_file(net.state_dict(), args.out)
    print(f"held-out accuracy {accuracy:.3f}; weights in {args.out}")


if __name__ == "__main__":
    main()
