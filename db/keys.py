"""Tenants and API keys. A key is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.tables import ApiKey, Tenant

KEY_PREFIX = "iq_"
#: What a tenant's keys may carry: ``admin`` is over what is the tenant's own (its webhook
#: secret), never over what every tenant shares.
TENANT_SCOPES = ("submit", "read", "admin")
#: The scope over what every tenant shares: models, versions, experiments, retraining, the
#: fleet's stats and scaling. Only ``inferq keys create --operator`` makes such a key.
OPERATOR = "operator"
SCOPES = (*TENANT_SCOPES, OPERATOR)


def hash_key(key: str) -> str:
    """Hex SHA-256 of a plaintext key."""
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_tenant(session: Session, name: str) -> Tenant:
    """The tenant named ``name``, created when missing."""
    tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()
    if tenant is None:
        tenant = Tenant(id=uuid.uuid4(), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    session: Session,
    tenant: Tenant,
    scopes: Sequence[str],
    expires_at: dt.datetime | None = None,
) -> tuple[str, ApiKey]:
    """A new key for ``tenant``; returns the plaintext (never stored) and its row."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=uuid.uuid4(),
        tenant_id=tenant.id,
        key_hash=hash_key(plaintext),
        prefix=plaintext[:10],
        scopes=list(dict.fromkeys(scopes)),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return plaintext, row


def find_key(session: Session, plaintext: str) -> ApiKey | None:
    """The live key (not revoked, not expired) matching ``plaintext``, or None."""
    return session.scalars(
        select(ApiKey).where(
            ApiKey.key_hash == hash_key(plaintext),
            ApiKey.revoked_at.is_(None),
            (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > func.now()),
        )
    ).one_or_none()


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """What ``inferq keys list`` shows of a key: never its hash."""

    prefix: str
    tenant: str
    scopes: tuple[str, ...]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def state(self, now: dt.datetime) -> str:
        """``live``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "live"


def list_keys(session: Session, tenant: str | None = None) -> list[KeyInfo]:
    """Every key (of ``tenant`` when given), oldest first, with its tenant's name."""
    query = (
        select(ApiKey, Tenant.name)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .order_by(Tenant.name, ApiKey.created_at)
    )
    if tenant is not None:
        query = query.where(Tenant.name == tenant)
    return [
        KeyInfo(row.prefix, name, tuple(row.scopes), row.created_at, row.expires_at, row.revoked_at)
        for row, name in session.execute(query)
    ]


def revoke_key(session: Session, prefix: str) -> int:
    """Revoke keys whose recognisable prefix is ``prefix``; returns how many."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
