"""Bearer API keys: each belongs to one tenant and carries scopes."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from api.http import ratelimit
from api.state import state
from db.keys import find_key, hash_key
from inferq.core.errors import Forbidden, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the key's tenant and scopes."""

    key_id: uuid.UUID
    tenant_id: uuid.UUID
    scopes: frozenset[str]


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    if scheme.lower() != "bearer" or not key.strip() or len(key) > 200:
        raise Unauthorized("The Authorization header must be 'Bearer <key>'.")
    return key.strip()


def authenticate() -> Principal:
    """The caller of this request, or 401."""
    key = _bearer()
    st = state()

    def load() -> Principal | None:
        with st.sessions() as session:
            row = find_key(session, key)
            return None if row is None else Principal(row.id, row.tenant_id, frozenset(row.scopes))

    principal = st.principals.get(hash_key(key), load)
    if principal is None:
        raise Unauthorized("The API key is unknown, revoked or expired.")
    return principal


def require(scope: str, *, take_token: bool = True) -> Callable[[F], F]:
    """Decorate a view: the caller must hold ``scope``; ``g.principal`` is set for the view.

    The caller's rate-limit token is taken here, unless ``take_token`` is False: the view
    then takes it itself (``api.http.ratelimit.deferred_token``), in a round trip to Redis
    it makes anyway, before it does anything that reaches past its own process.
    """

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = authenticate()
            if take_token:
                ratelimit.enforce(state(), principal.key_id)
            else:
                g.deferred_token = ratelimit.DeferredToken(state(), principal.key_id)
            if scope not in principal.scopes:
                raise Forbidden(f"This API key lacks the '{scope}' scope.")
            g.principal = principal
            return view(*args, **kwargs)

        wrapper.required_scope = scope  # type: ignore[attr-defined]  # read by tests and docs
        return wrapper  # type: ignore[return-value]

    return decorate


def current_principal() -> Principal:
    """The authenticated caller (inside a view decorated with :func:`require`)."""
    principal: Principal = g.principal
    return principal
