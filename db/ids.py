"""Job and batch ids: UUIDv7 (RFC 9562), whose first 48 bits are the creation time in ms.

A job's ``created_at`` is the time its id carries, so the id alone says which partition of
``jobs`` holds it (and whether retention has dropped it): see migration 0011, whose SQL
function ``job_time(id)`` reads the same bits. Older ids (UUIDv4) carry no time.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def new_id(at: dt.datetime | None = None) -> uuid.UUID:
    """A UUIDv7 for now (or for ``at``): 48 bits of Unix milliseconds, then randomness."""
    millis = (
        time.time_ns() // 1_000_000 if at is None else int((at - _EPOCH).total_seconds() * 1000)
    )
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & (2**48 - 1)) << 80
    value |= 0x7 << 76 | (rand >> 62 & 0xFFF) << 64  # version 7, 12 random bits
    value |= 0b10 << 62 | rand & (2**62 - 1)  # RFC 4122 variant, 62 random bits
    return uuid.UUID(int=value)


def time_of(value: uuid.UUID) -> dt.datetime | None:
    """The creation time a UUIDv7 carries (to the millisecond); None for other versions."""
    if value.version != 7:
        return None
    return _EPOCH + dt.timedelta(milliseconds=value.int >> 80)
