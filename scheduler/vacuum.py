"""Vacuum where autovacuum does not: the partitions of ``jobs`` on a Postgres that runs
without it.

Each job is written three times: inserted, claimed, stored. Neither update can be HOT (each
changes a column an index holds), so each leaves a dead row behind, and dead entries in
every index, among them ``ix_jobs_open``, the small index of open jobs that the reconciler,
the position of a job and the claim read. Autovacuum clears them as they pile up. A server
that runs with ``autovacuum = off`` never does: on such a Postgres, after 130,000 jobs the
reconciler's look for running jobs went through 82,000 dead index entries and 21,600 heap
pages to find none, 130 ms every 5 s (0.04 ms after a VACUUM), and Postgres spent 3.4 ms of
CPU per job at one client.

Every ``INFERQ_VACUUM_INTERVAL_S`` the scheduler looks at the partitions autovacuum leaves
alone (off on the server, or ``autovacuum_enabled = false`` on the table) and vacuums each
that holds more than ``MIN_DEAD`` dead rows and a tenth of its live ones, as autovacuum's
own rule would with a lower bar. Where autovacuum runs, nothing is done.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from db import partitions as repo

log = logging.getLogger(__name__)

#: Dead rows a partition must hold before it is vacuumed (about 10,000 jobs).
MIN_DEAD = 20_000
#: ... and this share of its live rows (autovacuum's default is 0.2).
DEAD_SHARE = 0.1


def vacuum_once(engine: Engine, min_dead: int = MIN_DEAD) -> list[str]:
    """Vacuum the partitions of ``jobs`` that need it and autovacuum leaves alone; returns
    their names."""
    with engine.connect() as conn:
        bloated = [
            part
            for part in repo.unvacuumed(conn)
            if part.dead > max(min_dead, DEAD_SHARE * part.live)
        ]
    done: list[str] = []
    if not bloated:
        return done
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for part in bloated:
            try:
                repo.vacuum(conn, part.name)
            except DBAPIError:  # dropped by retention meanwhile, or the server went away
                log.warning("could not vacuum %s", part.name, exc_info=True)
                continue
            done.append(part.name)
            log.info("vacuumed", extra={"partition": part.name, "dead_rows": part.dead})
    return done


def vacuum_forever(engine: Engine, interval_s: float, stop: threading.Event) -> None:
    """Run :func:`vacuum_once` every ``interval_s`` until ``stop``; a failed pass is logged."""
    while interval_s > 0 and not stop.wait(interval_s):
        try:
            vacuum_once(engine)
        except Exception:
            log.exception("vacuum pass failed")
