"""``inferq keys``: API keys. A key is printed once, as the last line of stdout."""

from __future__ import annotations

import datetime as dt

import click

from inferq.cli.common import db_session, info, load_settings, reports_errors


@click.group()
def keys() -> None:
    """API keys."""


@keys.command()
@click.option("--tenant", default=None, help="Tenant name (created when new).")
@click.option(
    "--scopes",
    default="submit,read",
    show_default=True,
    help="Comma-separated: submit, read, admin (the tenant's own: its webhook secret).",
)
@click.option(
    "--operator",
    is_flag=True,
    help="Add the operator scope: models, versions, experiments, retraining, stats and "
    "scaling, for every tenant. The tenant defaults to 'operator'.",
)
@click.option("--expires-in-days", type=float, default=None)
@reports_errors
def create(tenant: str | None, scopes: str, operator: bool, expires_in_days: float | None) -> None:
    """Create a key; prints it (only its hash is stored)."""
    from db.keys import OPERATOR, TENANT_SCOPES, create_key, ensure_tenant

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(TENANT_SCOPES))
    if unknown:
        hint = "; the operator scope comes with --operator" if OPERATOR in unknown else ""
        raise click.BadParameter(
            f"unknown scopes {unknown}; known: {', '.join(TENANT_SCOPES)}{hint}",
            param_hint="--scopes",
        )
    if tenant is None and not operator:
        raise click.UsageError("Missing option '--tenant' (optional only with --operator).")
    tenant = tenant or "operator"
    if operator:
        wanted.append(OPERATOR)
    expires = (
        dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=expires_in_days)
        if expires_in_days
        else None
    )
    with db_session(load_settings()) as session:
        plaintext, row = create_key(session, ensure_tenant(session, tenant), wanted, expires)
    info(
        f"key {row.prefix}… for tenant {tenant!r}, scopes {','.join(row.scopes)}; "
        "store it now, it is not shown again"
    )
    click.echo(plaintext)


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--all", "show_all", is_flag=True, help="Include revoked and expired keys.")
@reports_errors
def list_(tenant: str | None, show_all: bool) -> None:
    """List keys: prefix, tenant, scopes, state, expiry (never the key itself)."""
    from db.keys import list_keys

    now = dt.datetime.now(dt.timezone.utc)
    with db_session(load_settings()) as session:
        rows = list_keys(session, tenant)
    click.echo(f"{'PREFIX':<12}{'TENANT':<24}{'SCOPES':<28}{'STATE':<9}{'CREATED':<21}EXPIRES")
    for row in rows:
        state = row.state(now)
        if state != "live" and not show_all:
            continue
        expires = row.expires_at.strftime("%Y-%m-%d %H:%M") if row.expires_at else "never"
        click.echo(
            f"{row.prefix:<12}{row.tenant[:23]:<24}{','.join(row.scopes):<28}{state:<9}"
            f"{row.created_at:%Y-%m-%d %H:%M}{'':<5}{expires}"
        )


@keys.command()
@click.argument("prefix")
@reports_errors
def revoke(prefix: str) -> None:
    """Revoke the key starting with PREFIX (the first 10 characters)."""
    from db.keys import revoke_key

    with db_session(load_settings()) as session:
        count = revoke_key(session, prefix[:10])
    if not count:
        raise click.ClickException(f"no live key with prefix {prefix[:10]!r}")
    info(f"revoked {count} key(s)")


COMMANDS = [keys]
