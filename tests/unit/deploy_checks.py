"""What the deploy files promise and no config checker can see: the commands they run exist,
and the INFERQ_* variables they set are settings inferq reads."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from inferq.cli import main
from inferq.core.settings import FIELDS, LANES, PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_VARS = {PREFIX + name.upper() for name in FIELDS}
INFERQ_VAR = re.compile(r"\bINFERQ_[A-Z0-9_]+\b")
#: A command another issue adds (the autoscaler, issue 5): allowed only where the caller says
#: so, which it does only for the service that runs it, and only until the command exists.
PENDING = {"autoscaler"}


def unknown_settings(text: str) -> set[str]:
    """INFERQ_* names in ``text`` that no Settings field reads."""
    return set(INFERQ_VAR.findall(text)) - SETTINGS_VARS


def inferq_invocations(command: list[str] | str) -> list[list[str]]:
    """The argument lists of every ``inferq ...`` in a container command (exec or sh -c form)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] == ["sh", "-c"] and len(argv) == 3:
        argv = shlex.split(argv[2])
    calls: list[list[str]] = []
    current: list[str] | None = None
    for word in argv:
        if word == "inferq":
            current = []
            calls.append(current)
        elif word in ("&&", "||", ";", "|"):
            current = None
        elif current is not None:
            current.append(word)
    return calls


def check_invocation(args: list[str], pending_ok: bool = False) -> str | None:
    """Why ``inferq <args>`` would not run, or None when the CLI parses it."""
    command: click.Command = main
    path = ["inferq"]
    while isinstance(command, click.Group):
        if not args:
            return f"{' '.join(path)} needs a subcommand"
        name, args = args[0], args[1:]
        sub = command.commands.get(name)
        if sub is None:
            if pending_ok and command is main and name in PENDING:
                return None
            return f"{' '.join(path)} has no command {name!r}"
        command, path = sub, [*path, name]
    try:
        command.make_context(" ".join(path), list(args), resilient_parsing=False)
    except click.ClickException as exc:
        return f"{' '.join(path)} {' '.join(args)}: {exc.format_message()}"
    return None


#: Lanes work is published to: jobs (online, batch), training runs, webhook deliveries. Each
#: must have a consumer in every topology, or what lands there waits forever. (``maintenance``
#: is declared but nothing is published there: the scheduler reconciles in its own process.)
CONSUMED_LANES = frozenset(LANES) - {"maintenance"}


def lanes_consumed(command: list[str] | str, env: dict[str, str] | None = None) -> set[str]:
    """The lanes the ``inferq worker`` invocations in ``command`` consume (or the workers an
    ``inferq autoscaler --backend local`` starts): ``--lanes``, else INFERQ_WORKER_LANES from
    ``env``, else the settings' default."""
    default = (env or {}).get(PREFIX + "WORKER_LANES", Settings().worker.worker_lanes)
    found: set[str] = set()
    for argv in inferq_invocations(command):
        local_scaler = argv[:1] == ["autoscaler"] and "local" in argv  # it runs the workers
        if argv[:1] != ["worker"] and not local_scaler:
            continue
        lanes = argv[argv.index("--lanes") + 1] if "--lanes" in argv else default
        found |= {lane.strip() for lane in lanes.split(",") if lane.strip()}
    return found
