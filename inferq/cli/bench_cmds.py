"""``inferq bench``: measure a running system through its front door (nginx when present)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import click

from inferq.cli.client_cmds import make_client
from inferq.cli.common import info, load_settings, reports_errors
from inferq.core.settings import Settings


def _progress(total_s: float) -> tuple[Any, Any]:
    from tqdm import tqdm

    bar = tqdm(unit="job", desc="bench", dynamic_ncols=True, mininterval=0.5)
    return bar, lambda: bar.update(1)


def _service_urls() -> tuple[str | None, str | None]:
    settings = load_settings()
    record: dict[str, Any] = {}
    up = Path(settings.home) / "up.json"
    if up.exists():
        record = json.loads(up.read_text())
    redis_url = settings.redis_url or (
        settings.broker_url if (settings.broker_url or "").startswith("redis") else None
    )
    return settings.database_url or record.get("database_url"), redis_url or record.get("redis_url")


@click.group(invoke_without_command=True)
@click.option("--model", default="digits", show_default=True)
@click.option(
    "--concurrency",
    default="64",
    show_default=True,
    callback=lambda _ctx, _param, value: _levels(value),
    help="Closed loop: clients; a list (1,8,64) runs each in turn and compares their stages.",
)
@click.option(
    "--rate", type=float, default=None, help="Open loop: jobs/s (overrides --concurrency)."
)
@click.option("--duration", type=float, default=20.0, show_default=True, help="Seconds of load.")
@click.option("--mode", type=click.Choice(["wait", "poll"]), default="wait", show_default=True)
@click.option("--baseline", is_flag=True, help="Also measure in-process and a trivial endpoint.")
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path), default=None)
@click.option(
    "--output", type=click.Path(path_type=Path), default=None, help="Write the JSON report here."
)
@click.pass_context
@reports_errors
def bench(
    ctx: click.Context,
    model: str,
    concurrency: list[int],
    rate: float | None,
    duration: float,
    mode: str,
    baseline: bool,
    inputs_path: Path | None,
    output: Path | None,
) -> None:
    """Load a running system and report throughput, latency, cost per job and where a job's
    time goes, stage by stage (JSON on stdout, the stages as a table on stderr).

    Without a subcommand: submitters alone. ``inferq bench longpoll``: thousands of
    long-polls held open while they submit."""
    if ctx.invoked_subcommand is not None:
        return
    from inferq.bench import load
    from inferq.bench.inputs import inputs_for

    client = make_client()
    target = load.Target(
        client.base_url,
        client.session.headers["Authorization"].split()[1],
        model,
        inputs_for(model, inputs_path),
        mode,
    )
    info(f"warming up {model} for 3 s…")
    asyncio.run(load.closed_loop(target, min(concurrency[0], 8), 3.0, lambda: None))
    head = {"model": model, "mode": mode, "url": target.url, "duration_s": duration}
    if rate:
        report = {**head, **_measure(target, None, rate, duration)}
    else:
        levels = against_first([_measure(target, c, None, duration) for c in concurrency])
        report = {**head, **levels[0]} if len(levels) == 1 else {**head, "sweep": levels}
        _print_stages([(f"{level['concurrency']} clients", level) for level in levels])
    if baseline:
        report["baseline"] = _baseline(model, target, concurrency[-1], inputs_path)
        if "sweep" not in report:
            report["ratios"] = _ratios(report)
    text = json.dumps(report, indent=2)
    if output:
        output.write_text(text + "\n")
    click.echo(text)


def _levels(value: str | int) -> list[int]:
    """``--concurrency``: one number of clients or a comma-separated list of them."""
    try:
        levels = [int(part) for part in str(value).split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a number of clients or a list of them."
        ) from None
    if not levels or min(levels) < 1:
        raise click.BadParameter("clients must be 1 or more.")
    return levels


def _measure(
    target: Any, concurrency: int | None, rate: float | None, duration: float
) -> dict[str, Any]:
    """One load level: ``concurrency`` closed-loop clients, or Poisson arrivals at ``rate``."""
    from inferq.bench import load, probes, stages
    from inferq.bench.summary import histogram, summary

    database_url, redis_url = _service_urls()
    bar, tick = _progress(duration)
    before = probes.read(database_url, redis_url)
    started = time.perf_counter()
    report: dict[str, Any] = {}
    if rate:
        report["rate"] = rate
        samples = asyncio.run(load.open_loop(target, rate, duration, tick))
    else:
        report["concurrency"] = concurrency
        samples = asyncio.run(load.closed_loop(target, concurrency or 1, duration, tick))
    elapsed = time.perf_counter() - started
    bar.close()
    after = probes.read(database_url, redis_url, settle_s=1.5)
    good = [s for s in samples if s.ok]
    broken_down = [s.stages for s in good if s.stages]
    report.update(
        jobs=len(samples),
        failed=len(samples) - len(good),
        errors=sorted({s.status for s in samples if not s.ok}),
        throughput_jobs_s=round(len(good) / elapsed, 1),
        client_latency_ms=summary([s.latency_ms for s in good]),
        server_total_ms=summary([s.total_ms for s in good if s.total_ms is not None]),
        server_queue_ms=summary([s.queue_ms for s in good if s.queue_ms is not None]),
        server_predict_ms=summary([s.predict_ms for s in good if s.predict_ms is not None]),
        overhead_ms=summary(
            [
                s.total_ms - s.predict_ms
                for s in good
                if s.total_ms is not None and s.predict_ms is not None
            ]
        ),
        stages_p50_ms=stages.medians(broken_down),
        stages_jobs=len(broken_down),
        batch_size_histogram=histogram([s.batch_size for s in good]),
        cache_hits=sum(s.cached for s in good),
        **probes.per_job(before, after, len(good)),
    )
    return report


def _print_stages(levels: list[tuple[str, dict[str, Any]]]) -> None:
    from inferq.bench import stages

    if any(level["stages_jobs"] for _, level in levels):
        rows = [(label, level["stages_p50_ms"]) for label, level in levels]
        info("where a job's time goes (p50 of each stage, ms):\n" + stages.table(rows))
    for label, level in levels:
        p50, jobs_s = level["client_latency_ms"]["p50"], level["throughput_jobs_s"]
        line = f"{label}: client p50 {p50} ms, {jobs_s} jobs/s"
        first = level.get("against_first")
        if first:
            line += (
                f"; against {first['clients']} clients: p50 {first['p50']}×,"
                f" jobs/s {first['throughput']}×"
            )
        info(line)
        kinds = level.get("cpu_ms_per_job_by_process") or {}
        if kinds:
            spent = ", ".join(f"{kind} {ms:g}" for kind, ms in kinds.items())
            info(f"{label}: CPU per job on this host, ms: {spent}")


def against_first(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each level of a sweep after the first gains ``against_first``: its jobs/s and client
    p50 as multiples of the first level's (issue 21's targets read off directly: 8 clients
    at 4× the jobs/s of one, at most 2× its p50). None where the first level has no figure."""
    first = levels[0]
    base_jobs = first["throughput_jobs_s"]
    base_p50 = first["client_latency_ms"].get("p50")
    for level in levels[1:]:
        p50 = level["client_latency_ms"].get("p50")
        level["against_first"] = {
            "clients": first["concurrency"],
            "throughput": round(level["throughput_jobs_s"] / base_jobs, 2) if base_jobs else None,
            "p50": round(p50 / base_p50, 2) if base_p50 and p50 is not None else None,
        }
    return levels


def _baseline(
    model: str, target: Any, concurrency: int, inputs_path: Path | None
) -> dict[str, Any]:
    from inferq.bench import load
    from inferq.bench.baseline import in_process_throughput
    from inferq.bench.inputs import inputs_for

    info("baseline: trivial endpoint through the same front door…")
    trivial = asyncio.run(load.trivial_rps(target.url, concurrency, 8.0))
    info("baseline: the model in-process at batch sizes 1..128…")
    handler = _active_handler(load_settings(), model)
    in_process = in_process_throughput(handler, inputs_for(model, inputs_path))
    return {"trivial_endpoint_rps": round(trivial, 1), "in_process_inputs_s": in_process}


def _active_handler(settings: Settings, model: str) -> Any:
    """``model``'s active version loaded as a worker process loads it."""
    # The bench is a CLI command: it reaches into the worker runtime lazily, here only.
    from db.engine import make_engine, make_session_factory
    from db.registry import serving_info
    from inferq.core.artifacts.store import open_store, open_store_at
    from workers.artifact_cache import ArtifactCache
    from workers.device import choose_device, configure_threads
    from workers.runtime import ModelRuntime

    configure_threads(settings.worker.torch_threads)
    engine = make_engine(
        settings.require_database_url(), pool_size=1, application_name="inferq-bench"
    )
    sessions = make_session_factory(engine)
    with sessions() as session:
        serving = serving_info(session, model)
    if serving is None or serving.active_version_id is None:
        raise SystemExit(f"model {model!r} has no active version")
    cache = ArtifactCache(
        open_store(settings),
        settings.artifact_cache_path,
        settings.artifacts.artifact_cache_bytes,
        open_root=lambda uri: open_store_at(uri, settings),
    )
    try:
        runtime = ModelRuntime(sessions, choose_device(settings.worker.device), cache)
        return runtime.handler(serving.active_version_id)
    finally:
        engine.dispose()


def _ratios(report: dict[str, Any]) -> dict[str, float]:
    base = report["baseline"]
    best = max(base["in_process_inputs_s"].values())
    return {
        "jobs_per_trivial_request": round(
            report["throughput_jobs_s"] / base["trivial_endpoint_rps"], 3
        ),
        "end_to_end_per_in_process_best": round(report["throughput_jobs_s"] / best, 3),
        "in_process_batching_gain": round(best / base["in_process_inputs_s"]["1"], 2),
    }


@bench.command()
@click.option("--waiters", type=int, default=5000, show_default=True, help="Long-polls held.")
@click.option("--submitters", type=int, default=64, show_default=True, help="Closed loop.")
@click.option("--wait", "wait_s", type=float, default=10.0, show_default=True, help="?wait=N")
@click.option(
    "--duration", type=float, default=20.0, show_default=True, help="Seconds of submits, each."
)
@click.option("--model", default="digits", show_default=True)
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path), default=None)
@click.option(
    "--output", type=click.Path(path_type=Path), default=None, help="Write the JSON report here."
)
@reports_errors
def longpoll(
    waiters: int,
    submitters: int,
    wait_s: float,
    duration: float,
    model: str,
    inputs_path: Path | None,
    output: Path | None,
) -> None:
    """Hold WAITERS long-polls on a queued job while SUBMITTERS submit; compare the submits'
    latency with a run without the long-polls (needs a stack without batch workers)."""
    from inferq.bench import load
    from inferq.bench.inputs import inputs_for
    from inferq.bench.longpoll import (
        GRACE_S,
        LongPolls,
        p99_ratio,
        park,
        raise_open_files_limit,
        report,
    )
    from inferq.bench.summary import summary

    raise_open_files_limit(submitters + 64)
    client = make_client()
    key = client.session.headers["Authorization"].split()[1]
    make_input = inputs_for(model, inputs_path)
    target = load.Target(client.base_url, key, model, make_input, "wait")
    job_id = asyncio.run(park(target.url, key, model, make_input(0)))
    info(f"warming up, then {submitters} submitters alone for {duration:g} s…")
    asyncio.run(load.closed_loop(target, min(submitters, 8), 3.0, lambda: None))
    alone = asyncio.run(load.closed_loop(target, submitters, duration, lambda: None))
    polls = LongPolls(target.url, key, job_id, waiters, wait_s)
    polls.start(hold_s=wait_s + 2 + duration)
    info(f"opening {waiters} long-polls (?wait={wait_s:g}) over {wait_s:g} s…")
    time.sleep(wait_s + 2)
    info(f"{submitters} submitters beside them for {duration:g} s…")
    beside = asyncio.run(load.closed_loop(target, submitters, duration, lambda: None))
    info("waiting for the last long-polls…")
    held = report(polls.result(), wait_s)
    # Alone again once every long-poll is closed: this machine's speed drifts by a third
    # within minutes, and the mean of a run before and one after takes out a steady drift
    # that a single earlier baseline would put into the ratio.
    info(f"{submitters} submitters alone again for {duration:g} s…")
    after = asyncio.run(load.closed_loop(target, submitters, duration, lambda: None))

    def submits(samples: list[Any]) -> dict[str, Any]:
        good = [s.latency_ms for s in samples if s.ok]
        return {
            "jobs": len(samples),
            "failed": len(samples) - len(good),
            "errors": sorted({s.status for s in samples if not s.ok}),
            "latency_ms": summary(good),
        }

    base, loaded, base_after = submits(alone), submits(beside), submits(after)
    ratio = p99_ratio(loaded, base, base_after)
    result = {
        "url": target.url,
        "waiters": waiters,
        "wait_s": wait_s,
        "submitters": submitters,
        "duration_s": duration,
        "long_polls": held,
        "submits_alone": base,
        "submits_beside_long_polls": loaded,
        "submits_alone_after": base_after,
        "submit_p99_ratio": None if ratio is None else round(ratio, 2),
        "goal": {
            f"every long-poll within wait + {GRACE_S:g} s": held["late_over_wait_plus_1s"] == 0
            and held["no_answer"] == 0,
            "submit p99 at most 1.5x": ratio is not None and ratio <= 1.5,
            "no 5xx": held["server_errors"] == 0
            and not any(
                e.startswith("http 5")
                for e in base["errors"] + loaded["errors"] + base_after["errors"]
            ),
        },
    }
    text = json.dumps(result, indent=2)
    if output:
        output.write_text(text + "\n")
    click.echo(text)


COMMANDS = [bench]
