"""``inferq keys create|list|revoke`` on the real database: a key is shown once, listed by
its prefix only, and stops working when revoked or expired."""

from __future__ import annotations

import uuid

from click.testing import CliRunner
from flask.testing import FlaskClient

from inferq.cli import main
from inferq.core.settings import Settings


def run(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=settings.to_env(), catch_exceptions=False)
    return result.exit_code, result.stdout


def test_create_list_and_revoke(settings: Settings, http: FlaskClient) -> None:
    tenant = f"frank-{uuid.uuid4().hex[:6]}"
    code, out = run(settings, "keys", "create", "--tenant", tenant, "--scopes", "read,admin")
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert key.startswith("iq_") and len(key) > 40
    _, temporary = run(
        settings, "keys", "create", "--tenant", tenant, "--scopes", "read", "--expires-in-days", "2"
    )
    code, listing = run(settings, "keys", "list", "--tenant", tenant)
    assert code == 0 and key not in listing
    rows = [line.split() for line in listing.strip().splitlines()[1:]]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (key[:10], "read,admin", "live"),
        (temporary.strip()[:10], "read", "live"),
    ]
    assert rows[1][-2] != "never" and rows[0][-1] == "never"
    auth = {"Authorization": f"Bearer {key}"}
    assert http.get("/v1/models", headers=auth).status_code == 200

    assert run(settings, "keys", "revoke", key[:10])[0] == 0
    assert http.get("/v1/models", headers=auth).status_code == 401
    _, live = run(settings, "keys", "list", "--tenant", tenant)
    assert key[:10] not in live
    _, everything = run(settings, "keys", "list", "--tenant", tenant, "--all")
    assert any(
        line.startswith(key[:10]) and " revoked " in line for line in everything.splitlines()
    )


def test_unknown_scopes_are_refused(settings: Settings) -> None:
    result = CliRunner().invoke(
        main, ["keys", "create", "--tenant", "x", "--scopes", "read,root"], env=settings.to_env()
    )
    assert result.exit_code != 0 and "root" in result.output
