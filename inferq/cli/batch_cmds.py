"""``inferq batch``: submit a JSON Lines file as a batch, follow it, fetch its results.

Through the REST API, like ``inferq submit``: INFERQ_URL and INFERQ_API_KEY, or what
``inferq up`` left in INFERQ_HOME.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from inferq.cli.client_cmds import make_client
from inferq.cli.common import info, reports_errors
from inferq.client import Client


class UploadProgress:
    """A binary file that advances a progress bar as the HTTP client reads it."""

    def __init__(self, file: IO[bytes], size: int | None, bar: Any) -> None:
        self.file, self.size, self.bar = file, size, bar

    def read(self, amount: int = -1) -> bytes:
        block = self.file.read(amount)
        self.bar.update(len(block))
        return block

    def __iter__(self) -> Iterator[bytes]:
        while block := self.read(1 << 16):
            yield block

    def __len__(self) -> int:
        return self.size or 0


def _print(body: dict[str, Any]) -> None:
    click.echo(json.dumps(body, indent=2))


def _summary(batch: dict[str, Any]) -> str:
    counts = batch["counts"]
    rate = batch.get("throughput_per_s")
    eta = batch.get("eta_s")
    return (
        f"{counts['succeeded']} ok, {counts['failed']} failed, {counts['canceled']} canceled"
        + (f", {rate:g}/s" if rate else "")
        + (f", eta {eta:g}s" if eta else "")
    )


@click.group()
def batch() -> None:
    """Offline batches: many inputs, one upload, results in input order."""


@batch.command()
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True, help="The model every line is an input of.")
@click.option("--wait", is_flag=True, help="Follow the batch with a progress bar until it ends.")
@click.option("--timeout", type=float, default=86_400.0, show_default=True)
@reports_errors
def submit(file: Path, model: str, wait: bool, timeout: float) -> None:
    """Submit FILE (JSON Lines: one input object per line; - reads stdin) and print the batch."""
    from tqdm import tqdm

    client = make_client()
    stdin = str(file) == "-"
    size = None if stdin else file.stat().st_size
    source = sys.stdin.buffer if stdin else file.open("rb")
    with source as raw, tqdm(total=size, unit="B", unit_scale=True, desc="upload") as bar:
        body: Any = UploadProgress(raw, size, bar) if size else raw
        created = client.submit_batch(model, body)
    info(f"batch {created['id']}: {created['total']} inputs, {created['cached']} from the cache")
    if wait:
        created = follow(client, created, timeout)
    _print(created)
    if wait and created["status"] != "completed":
        sys.exit(1)


def follow(client: Client, batch: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Poll the batch with a progress bar over its items until it is no longer running."""
    from tqdm import tqdm

    with tqdm(total=batch["total"], unit="item", desc="batch") as bar:

        def show(now: dict[str, Any]) -> None:
            bar.update(now["done"] - bar.n)
            bar.set_postfix_str(_summary(now), refresh=False)

        return client.wait_batch(batch["id"], timeout_s=timeout, on_progress=show)


@batch.command()
@click.argument("batch_id")
@reports_errors
def show(batch_id: str) -> None:
    """Print a batch: counts by status, throughput, ETA."""
    _print(make_client().batch(batch_id))


@batch.command()
@click.argument("batch_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@reports_errors
def results(batch_id: str, output: Path | None, fmt: str) -> None:
    """Write a batch's results in input order to OUTPUT (default stdout)."""
    client = make_client()
    now = client.batch(batch_id)
    if now["status"] == "running":
        info(f"note: batch {batch_id} is still running ({_summary(now)}); unfinished items say so")
    if output is None:
        written = client.batch_results(batch_id, sys.stdout.buffer, fmt)
    else:
        partial = output.with_name(output.name + ".part")
        with partial.open("wb") as out:
            written = client.batch_results(batch_id, out, fmt)
        os.replace(partial, output)
    if written != now["total"]:
        raise click.ClickException(f"got {written} results of {now['total']}: download cut short")
    info(f"{written} results" + (f" in {output}" if output else ""))


@batch.command()
@click.argument("batch_id")
@reports_errors
def cancel(batch_id: str) -> None:
    """Cancel a batch: its queued items never run."""
    _print(make_client().cancel_batch(batch_id))


COMMANDS = [batch]
