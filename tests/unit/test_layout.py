"""The layout rules of ARCHITECTURE.md, enforced: services never import each
other, db imports nothing of ours, the API never imports torch, inferq is in layers
(import-linter contracts in pyproject); module names say what they hold; the architecture
page names what exists."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import grimp
import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout


PACKAGES = ("inferq", "api", "workers", "scheduler", "db")
#: The modules and packages that may share a base name, by full path, because they are the
#: same concept in different rooms (a resource's route, service and repository; each
#: service's own metrics…). Any other pair of paths with one name fails the test below.
SHARED_NAMES: dict[str, tuple[str, set[str]]] = {
    "batches": (
        "offline batches (/v1/batches): route, service, repository",
        {"api/routes/batches.py", "api/services/batches.py", "db/batches.py"},
    ),
    "experiments": (
        "A/B and shadow experiments: route, service, repository, rules",
        {
            "api/routes/experiments.py",
            "api/services/experiments.py",
            "db/experiments.py",
            "inferq/domain/experiments.py",
        },
    ),
    "handlers": (
        "model handlers: the interface, and the built-in handlers that implement it",
        {"inferq/core/handlers.py", "workers/handlers/"},
    ),
    "idempotency": (
        "Idempotency-Key: the API's gate and its repository",
        {"api/services/idempotency.py", "db/idempotency.py"},
    ),
    "jobs": (
        "jobs: route, service, repository",
        {"api/routes/jobs.py", "api/services/jobs.py", "db/jobs.py"},
    ),
    "local": (
        "the one-host stack: `inferq up`, and the autoscaler backend it runs (--backend local)",
        {"inferq/local/", "scheduler/backends/local.py"},
    ),
    "metrics": (
        "Prometheus metrics: the shared definitions and each service's own",
        {
            "api/http/metrics.py",
            "inferq/core/metrics.py",
            "scheduler/metrics.py",
            "workers/metrics.py",
        },
    ),
    "models": (
        "the model registry over REST: route and service",
        {"api/routes/models.py", "api/services/models.py"},
    ),
    "quotas": (
        "admission control: the API's gate and its counts",
        {"api/services/quotas.py", "db/quotas.py"},
    ),
    "scaling": (
        "the autoscaler's decisions: route and repository",
        {"api/routes/scaling.py", "db/scaling.py"},
    ),
    "service": (
        "a service's entry point (worker, scheduler, autoscaler)",
        {"scheduler/autoscaler/service.py", "scheduler/service.py", "workers/service.py"},
    ),
    "stats": (
        "the operator's stats: route and repository",
        {"api/routes/stats.py", "db/stats.py"},
    ),
    "training": (
        "training runs: route, repository, rules, task",
        {
            "api/routes/training.py",
            "db/training.py",
            "inferq/domain/training.py",
            "workers/tasks/training.py",
        },
    ),
    "webhooks": (
        "webhooks: route, service, repository, rules, task",
        {
            "api/routes/webhooks.py",
            "api/services/webhooks.py",
            "db/webhooks.py",
            "inferq/domain/webhooks.py",
            "workers/tasks/webhooks.py",
        },
    ),
}


def production_modules() -> list[Path]:
    return [
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts and path.name not in ("__init__.py", "__main__.py")
    ]


def named_rooms() -> dict[str, set[str]]:
    """Every production module (``api/routes/jobs.py``) and sub-package (``workers/handlers/``)
    by its base name."""
    by_name: dict[str, set[str]] = {}
    for path in production_modules():
        by_name.setdefault(path.stem, set()).add(str(path.relative_to(ROOT)))
    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            room = init.parent
            if room != ROOT / package and "migrations" not in room.parts:
                by_name.setdefault(room.name, set()).add(f"{room.relative_to(ROOT)}/")
    return by_name


def test_no_two_modules_share_a_name_unless_they_are_one_concept() -> None:
    """Catches: a new module or package named like another that holds something else (four
    `stats` meaning four things), e.g. a ``workers/batches.py`` for the worker's batch
    machinery or a ``workers/stats.py``, even under a name allowed elsewhere; rename it after
    what it holds, or add its path here with its meaning. A path listed here that no longer
    shares its name fails too, so the list stays true."""
    shared = {name: paths for name, paths in named_rooms().items() if len(paths) > 1}
    allowed = {name: paths for name, (_meaning, paths) in SHARED_NAMES.items()}
    assert shared == allowed


def test_architecture_names_only_paths_that_exist() -> None:
    """Catches: ARCHITECTURE.md left behind by a move or a rename."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`((?:inferq|api|workers|scheduler|db|nginx|deploy)/[\w/.]*)`", text))
    assert len(named) > 20  # the page names the rooms and the job's path
    assert [path for path in sorted(named) if not (ROOT / path).exists()] == []
    for package in PACKAGES:  # every top-level room is on the page
        assert f"`{package}/" in text


def test_architecture_names_every_room_of_inferq_and_api() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for package in ("inferq", "api", "workers", "scheduler"):
        for room in (ROOT / package).iterdir():
            if room.is_dir() and (room / "__init__.py").exists():
                assert f"`{package}/{room.name}/`" in text, f"{package}/{room.name}/ is missing"


#: Calls that put a message on the broker. Only ``inferq/core/broker.py`` (``publish``) makes
#: them, apart from the sends below that Celery makes itself; the app carries the same
#: ``RETRY_POLICY`` for those (tests/unit/test_messages_and_errors.py).
SENDS = re.compile(r"\bsend_task\(|\bapply_async\(|\.delay\(|\.retry\(|\.beat_schedule\s*=")
SENDS_ELSEWHERE = {
    "workers/tasks/webhooks.py": "self.retry: Celery sends the delivery again after its "
    "backoff, keeping its try count (request.retries), which publish cannot carry",
    "scheduler/service.py": "beat_schedule: beat sends the scheduled training "
    "(scheduler/retraining.py), a TrainRequest's args to its lane's route",
}


def test_nothing_reaches_the_broker_except_through_publish() -> None:
    """Catches: a ``send_task``/``apply_async``/``.delay`` (or a ``self.retry``, or a beat
    schedule) in a production module other than inferq/core/broker.py and the two listed
    above, i.e. a message sent outside ``publish``, perhaps with another retry policy."""
    found = {
        f"{path.relative_to(ROOT)}:{number}"
        for path in production_modules()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if SENDS.search(line.split("#")[0])
    }
    allowed = {"inferq/core/broker.py", *SENDS_ELSEWHERE}
    assert {site for site in found if site.split(":")[0] not in allowed} == set()
    assert {site.split(":")[0] for site in found} == allowed  # each exception is still real


ARROW = "──▶"


def drawn_arrows() -> set[tuple[str, str]]:
    """The pairs (importer, imported) of ARCHITECTURE.md's arrows: each line's every room
    on the left to every room on the right (a trailing parenthesis is a remark)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text[text.index("## Arrows") : text.index("## A job's id")]
    pairs = set()
    for line in section.splitlines():
        if ARROW in line:
            left, right = line.split(ARROW)
            rooms = [side.split("(")[0].split(",") for side in (left, right)]
            importers, imported = ([room.strip() for room in side] for side in rooms)
            pairs |= {(a, b) for a in importers for b in imported}
    return pairs


def real_imports(graph: grimp.ImportGraph, rooms: set[str]) -> set[tuple[str, str]]:
    """The pairs of ``rooms`` where a module of the first directly imports one of the second."""

    def members(room: str) -> set[str]:
        return {room} | (graph.find_descendants(room) if graph.find_children(room) else set())

    inside = {room: members(room) for room in rooms}
    found = set()
    for a, b in itertools.permutations(sorted(rooms), 2):
        if not (a.startswith(f"{b}.") or b.startswith(f"{a}.")):
            imported = {i for m in inside[a] for i in graph.find_modules_directly_imported_by(m)}
            if imported & inside[b]:
                found.add((a, b))
    return found


def contracts_forbid(importer: str, imported: str) -> bool:
    """Whether an import-linter contract in pyproject.toml forbids ``importer`` importing
    ``imported``."""

    def under(module: str, modules: list[str]) -> bool:
        return any(module == m or module.startswith(f"{m}.") for m in modules)

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    for contract in config["contracts"]:
        if contract["type"] == "forbidden":
            if under(importer, contract["source_modules"]) and under(
                imported, contract["forbidden_modules"]
            ):
                return True
        elif contract["type"] == "independence":
            if under(importer, contract["modules"]) and under(imported, contract["modules"]):
                return True
        elif contract["type"] == "layers":
            for container in contract["containers"]:
                level = {
                    f"{container}.{name.strip()}": depth
                    for depth, layer in enumerate(contract["layers"])
                    for name in layer.split("|")
                }
                depths = [
                    next((d for room, d in level.items() if under(module, [room])), None)
                    for module in (importer, imported)
                ]
                if None not in depths and depths[0] > depths[1]:  # type: ignore[operator]
                    return True
    return False


def test_the_architecture_arrows_are_the_real_imports_and_one_way() -> None:
    """Catches: an arrow that no import draws (tried: the old ``inferq.core ──▶ db``), a room
    importing another without an arrow on the page (tried: ``from db.engine import
    make_engine`` in inferq/bench/runner.py), and an arrow whose reverse import exists or
    that no import-linter contract forbids (tried: the new contract on the services'
    imports of inferq removed from pyproject.toml)."""
    drawn = drawn_arrows()
    rooms = {room for pair in drawn for room in pair}
    assert len(rooms) >= 11  # the rooms of inferq, the three services and db
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert real_imports(graph, rooms) == drawn
    for importer, imported in sorted(drawn):
        assert not graph.chain_exists(imported, importer, as_packages=True), (imported, importer)
        assert contracts_forbid(imported, importer), f"nothing forbids {imported} -> {importer}"


UNPICKLING = re.compile(r"\btorch\.load\(|\bimport pickle\b|\bpickle\.loads?\(|\bjoblib\.load\(")


def test_nothing_is_ever_unpickled() -> None:
    """Catches: a ``torch.load`` (or pickle) anywhere in inferq's code: weights are
    safetensors, and a pickle runs whatever code its author put in it."""
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in production_modules()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if UNPICKLING.search(line)
    ]
    assert found == []
