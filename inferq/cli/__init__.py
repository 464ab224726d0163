"""The ``inferq`` command line: one group, one module per area of commands."""

from __future__ import annotations

import click

from inferq.cli import (
    autoscaler_cmds,
    batch_cmds,
    bench_cmds,
    client_cmds,
    db_cmds,
    experiments_cmds,
    init_cmds,
    keys_cmds,
    models_cmds,
    retrain_cmds,
    service_cmds,
    simulate_cmds,
    stack_cmds,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="inferq", prog_name="inferq")
def main() -> None:
    """inferq: asynchronous serving for PyTorch models."""


for module in (
    stack_cmds,
    service_cmds,
    db_cmds,
    keys_cmds,
    models_cmds,
    init_cmds,
    retrain_cmds,
    experiments_cmds,
    client_cmds,
    batch_cmds,
    bench_cmds,
    autoscaler_cmds,
    simulate_cmds,
):
    for command in module.COMMANDS:
        main.add_command(command)
