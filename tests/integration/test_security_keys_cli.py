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


def test_operator_keys_come_only_from_the_operator_flag(
    settings: Settings, http: FlaskClient
) -> None:
    # Given a tenant's admin key and an operator key, both made by the CLI
    tenant = f"olga-{uuid.uuid4().hex[:6]}"
    code, out = run(settings, "keys", "create", "--tenant", tenant, "--scopes", "read,admin")
    assert code == 0
    admin = {"Authorization": f"Bearer {out.strip().splitlines()[-1]}"}
    code, out = run(settings, "keys", "create", "--operator")
    assert code == 0
    operator = {"Authorization": f"Bearer {out.strip().splitlines()[-1]}"}
    _, listing = run(settings, "keys", "list", "--tenant", "operator")
    assert any(line.split()[2] == "submit,read,operator" for line in listing.splitlines()[1:])
    # Then only the operator's reads the fleet's stats; the tenant's admin gets 403
    assert http.get("/v1/stats", headers=operator).status_code == 200
    assert http.get("/v1/stats", headers=admin).status_code == 403
    # And the scope cannot be asked for by name, nor without a tenant unless --operator
    named = CliRunner().invoke(
        main, ["keys", "create", "--tenant", "x", "--scopes", "operator"], env=settings.to_env()
    )
    assert named.exit_code != 0 and "--operator" in named.output
    bare = CliRunner().invoke(main, ["keys", "create"], env=settings.to_env())
    assert bare.exit_code != 0 and "--tenant" in bare.output
