"""Idempotency keys: which job an API key's ``Idempotency-Key`` stands for, for a day.

A key is claimed in the transaction that inserts its job, through the primary key: of two
concurrent requests with the same key, the second waits for the first to commit, finds the
key taken, and rolls its own job back.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import delete, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.tables import IdempotencyKey


def _cutoff(ttl_s: float) -> object:
    return func.now() - dt.timedelta(seconds=ttl_s)


def find_key(session: Session, key_id: uuid.UUID, key: str, ttl_s: float) -> IdempotencyKey | None:
    """The live (younger than ``ttl_s``) record of ``key`` sent with API key ``key_id``."""
    return session.scalars(
        select(IdempotencyKey).where(
            IdempotencyKey.key_id == key_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at > _cutoff(ttl_s),
        )
    ).one_or_none()


def claim_key(
    session: Session,
    key_id: uuid.UUID,
    key: str,
    fingerprint: str,
    job_id: uuid.UUID,
    ttl_s: float,
) -> bool:
    """Record that ``key`` made ``job_id``; False when a live record of it already exists.

    An expired record is taken over. A concurrent claim of the same key blocks here until
    the other transaction ends (Postgres's unique index), then sees its outcome.
    """
    values = insert(IdempotencyKey).values(
        key_id=key_id, key=key, fingerprint=fingerprint, job_id=job_id
    )
    upsert = values.on_conflict_do_update(
        index_elements=[IdempotencyKey.key_id, IdempotencyKey.key],
        set_={"fingerprint": fingerprint, "job_id": job_id, "created_at": func.now()},
        where=IdempotencyKey.created_at <= _cutoff(ttl_s),
    )
    return session.execute(upsert.returning(literal_column("1"))).first() is not None


def purge_keys(session: Session, before: dt.datetime) -> int:
    """Delete the records whose job was created before ``before`` (retention passes the
    later of the records' expiry and the oldest job kept); returns how many.

    Row by row, unlike the tables partitioned with ``jobs``: a key must stay unique over
    all time, which a partitioned table cannot promise (db/partitions.py). A record's job
    is made in the transaction that claims it, so ``job_created_at`` is its age too.
    """
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.job_created_at < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
