"""``inferq init NAME``: a model to start from, runnable before anything is edited.

It writes a handler module around a small ``nn.Module``, its first weights (safetensors),
an example input and a test that runs ``inferq models check`` on them, and says the next
three commands: check it, register it, send it a job.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import click

from inferq.cli.common import info, reports_errors
from inferq.core.errors import ConfigError

HANDLER = '''"""{name}: a PyTorch model served by inferq.

Edit Net (the architecture its weights fit), the input schema, prepare() (one JSON input to
what predict takes) and predict() (a batch to one JSON output each). Weights are a state_dict
saved with safetensors: `python {module}.py` writes fresh ones to {name}.safetensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from inferq import ModelHandler


class Net(nn.Module):
    """The model: {features} numbers in, {classes} class scores out."""

    def __init__(self, features: int = {features}, classes: int = {classes}) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class {cls}(ModelHandler):
    """Serves Net: inputs are validated against input_schema before a job is accepted."""

    name = "{name}"
    input_schema = {{
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["features"],
        "properties": {{
            "features": {{
                "type": "array",
                "items": {{"type": "number"}},
                "minItems": {features},
                "maxItems": {features},
            }}
        }},
    }}
    default_config = {{"max_batch_size": 64}}

    def build(self) -> nn.Module:
        return Net()

    def prepare(self, item: Mapping[str, Any]) -> list[float]:
        return [float(x) for x in item["features"]]

    def predict(self, batch: Sequence[list[float]]) -> list[dict[str, Any]]:
        with self.inference():
            scores = self.module(torch.tensor(batch, device=self.device)).softmax(-1).cpu()
        return [
            {{"label": int(row.argmax()), "probabilities": [round(float(p), 6) for p in row]}}
            for row in scores
        ]


if __name__ == "__main__":
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(Net().state_dict(), "{name}.safetensors")
    print("wrote {name}.safetensors")
'''

TEST = '''"""Tries {module} before it is served: `pytest test_{module}.py`."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_the_model_answers_its_example_in_batches_and_alone() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inferq", "models", "check", "{module}:{cls}",
         "--weights", str(HERE / "{name}.safetensors"),
         "--example", str(HERE / "{name}_example.json")],
        cwd=HERE, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
'''

EXAMPLE = [{"features": [5.1, 3.5, 1.4, 0.2]}, {"features": [6.7, 3.0, 5.2, 2.3]}]


@click.command()
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Where to write the files.")  # fmt: skip
@reports_errors
def init(name: str, directory: str) -> None:
    """Write a model to start from: NAME_model.py, NAME.safetensors, NAME_example.json and a
    test, then print the commands that check, register and run it."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", name):
        raise ConfigError("NAME: lowercase letters, digits and _, starting with a letter")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    module, cls = f"{name}_model", "".join(part.title() for part in name.split("_")) + "Handler"
    files = {
        folder / f"{module}.py": HANDLER.format(
            name=name, module=module, cls=cls, features=4, classes=3
        ),
        folder / f"{name}_example.json": json.dumps(EXAMPLE, indent=2) + "\n",
        folder / f"test_{module}.py": TEST.format(name=name, module=module, cls=cls),
    }
    taken = [str(path) for path in files if path.exists()]
    if taken:
        raise ConfigError(f"not overwriting {', '.join(taken)}")
    for path, text in files.items():
        path.write_text(text)
    _write_weights(folder / f"{module}.py", folder / f"{name}.safetensors")
    info(f"wrote {', '.join(p.name for p in files)} and {name}.safetensors in {folder}")
    click.echo(
        "next, from that directory:\n"
        f"  inferq models check {module}:{cls} --weights {name}.safetensors "
        f"--example {name}_example.json\n"
        f"  inferq models add {name} --handler {module}:{cls} --weights {name}.safetensors "
        "--activate\n"
        f"  inferq submit --model {name} --input '{json.dumps(EXAMPLE[0])}' --wait"
    )


def _write_weights(module_path: Path, weights: Path) -> None:
    """The module's first weights, from its own Net with a fixed seed."""
    import torch
    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location(module_path.stem, module_path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules.pop(module_path.stem, None)
    spec.loader.exec_module(loaded)
    torch.manual_seed(0)
    save_file(loaded.Net().state_dict(), str(weights))


COMMANDS = [init]
