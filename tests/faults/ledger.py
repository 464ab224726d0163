"""Counting what happened to every accepted job, from Postgres itself."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence

from sqlalchemy import create_engine, text

from tests.faults.load import Accepted

TERMINAL = ("succeeded", "failed", "canceled")


@dataclasses.dataclass
class Outcome:
    """One scenario's figures."""

    scenario: str
    accepted: int
    succeeded: int
    failed: int
    failure_reasons: dict[str, int]
    lost: int
    duplicate_results: int
    rerun: int
    refused: int
    recover_s: float
    slowest: str = ""

    ROW = "| {scenario} | {accepted} | {succeeded} | {failed} {reasons}| {lost} | {duplicate_results} | {rerun} | {refused} | {recover_s:.1f} |"

    def row(self) -> str:
        reasons = (
            f"({', '.join(f'{k} {v}' for k, v in self.failure_reasons.items())}) "
            if self.failure_reasons
            else ""
        )
        return self.ROW.format(reasons=reasons, **dataclasses.asdict(self))


HEADER = (
    "| scenario | accepted | succeeded | failed (why) | lost | duplicate results | re-run | refused at submit | seconds to recover |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def account(
    scenario: str,
    database_url: str,
    accepted: Sequence[Accepted],
    fault_end: float,
    refused: int,
    bound_s: float = 120.0,
) -> Outcome:
    """Wait (bounded) until every accepted job is terminal, then count."""
    ids = [a.id for a in accepted]
    engine = create_engine(database_url)
    deadline = time.monotonic() + bound_s
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT id::text, status, attempts, error->>'type', "
                        "extract(epoch FROM completed_at), extract(epoch FROM created_at), worker "
                        "FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"
                    ),
                    {"ids": ids},
                ).all()
            open_jobs = [r for r in rows if r[1] not in TERMINAL]
            if (not open_jobs and len(rows) == len(ids)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        with engine.connect() as conn:
            terminal_counts = conn.execute(
                text(
                    "SELECT job_id::text, count(*) FROM fault_terminal_log "
                    "WHERE job_id = ANY(CAST(:ids AS uuid[])) GROUP BY job_id"
                ),
                {"ids": ids},
            ).all()
    finally:
        engine.dispose()
    statuses = Counter(r[1] for r in rows)
    before_end = {a.id for a in accepted if a.at <= fault_end}
    last_done = max(
        (r[4] for r in rows if r[0] in before_end and r[4] is not None), default=fault_end
    )
    slow = max((r for r in rows if r[4] is not None), key=lambda r: r[4] - r[5], default=None)
    return Outcome(
        scenario=scenario,
        accepted=len(ids),
        succeeded=statuses["succeeded"],
        failed=statuses["failed"],
        failure_reasons=dict(Counter(r[3] for r in rows if r[1] == "failed")),
        lost=len(ids) - sum(statuses[s] for s in TERMINAL),
        duplicate_results=sum(1 for _, count in terminal_counts if count > 1),
        rerun=sum(1 for r in rows if r[2] > 1),
        refused=refused,
        recover_s=max(0.0, float(last_done) - fault_end),
        slowest=(
            f"slowest job: created {float(slow[5]) - fault_end:+.1f}s, done {float(slow[4]) - fault_end:+.1f}s "
            f"from fault end, attempts {slow[2]}, worker {slow[6]}"
            if slow
            else ""
        ),
    )
