"""nginx in front of the API nodes of ``inferq up``: find it, render its config, check it.

The http-level config comes from ``nginx/inferq.conf.template``, the same file docker compose
renders with envsubst; :func:`main_conf` wraps it in an nginx.conf of our own, so nginx keeps
its pid, temp files and logs under ``INFERQ_HOME`` and runs in the foreground under supervisord.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path

from inferq.core.errors import ConfigError, InferqError
from inferq.core.settings import Settings

#: The template lives at the top of the source tree, beside docker-compose.yml, in the
#: ``nginx`` package that ships it as data.
TEMPLATE = Path(str(files("nginx") / "inferq.conf.template"))
#: Only ${UPPER_CASE} names are placeholders; nginx's own variables are $lower_case.
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
#: Where distributions put nginx when it is not on PATH (sbin is often missing for non-root).
SEARCH_PATH = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
#: Added to INFERQ_MAX_WAIT_S so a long-poll always ends at the API before nginx gives up.
PROXY_TIMEOUT_MARGIN_S = 30
CHECK_TIMEOUT_S = 30.0


class NginxError(InferqError):
    """Raised when nginx's config cannot be rendered or nginx rejects it."""


@dataclasses.dataclass(frozen=True)
class NginxPaths:
    """nginx's files under INFERQ_HOME: its prefix (config, pid, temp) and its logs."""

    home: Path

    prefix = property(lambda self: self.home / "nginx")
    conf = property(lambda self: self.prefix / "nginx.conf")
    site = property(lambda self: self.prefix / "inferq.conf")
    pidfile = property(lambda self: self.prefix / "nginx.pid")
    temp = property(lambda self: self.prefix / "tmp")
    access_log = property(lambda self: self.home / "logs" / "nginx-access.log")
    error_log = property(lambda self: self.home / "logs" / "nginx-error.log")


def find_nginx(setting: str) -> str | None:
    """The nginx binary that INFERQ_NGINX names: ``auto`` searches, ``off`` is None."""
    if setting == "off":
        return None
    if setting != "auto":
        if not (os.path.isfile(setting) and os.access(setting, os.X_OK)):
            raise ConfigError(f"INFERQ_NGINX={setting!r} is not an executable file")
        return setting
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in SEARCH_PATH if os.access(p, os.X_OK)), None)


def proxy_timeout_s(settings: Settings) -> int:
    """nginx's proxy read/send timeout: longer than any long-poll the API allows."""
    return int(settings.api.max_wait_s) + PROXY_TIMEOUT_MARGIN_S


def local_values(
    settings: Settings, paths: NginxPaths, node_ports: Sequence[int]
) -> dict[str, str]:
    """Template values for ``inferq up``: the public port in front of nodes on loopback."""
    # A refused connection on loopback costs nothing, so a node that failed is tried again
    # after 2 s (not nginx's default 10 s): at start, before the nodes listen, every node fails.
    servers = "\n    ".join(
        f"server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in node_ports
    )
    return {
        "NGINX_LISTEN": f"127.0.0.1:{settings.local.port}",
        "NGINX_RESOLVER": "",
        "NGINX_UPSTREAM_SERVERS": servers,
        "NGINX_PROXY_TIMEOUT_S": str(proxy_timeout_s(settings)),
        "NGINX_ACCESS_LOG": _quote(paths.access_log),
        "INFERQ_MAX_BODY_BYTES": str(settings.api.max_body_bytes),
        "INFERQ_MAX_BATCH_BYTES": str(settings.batches.max_batch_bytes),
        "INFERQ_MAX_ARTIFACT_BYTES": str(settings.artifacts.max_artifact_bytes),
        "INFERQ_RATE_LIMIT_RPS": str(settings.front.rate_limit_rps),
        "INFERQ_RATE_LIMIT_BURST": str(settings.front.rate_limit_burst),
        "INFERQ_UPLOADS_PER_CLIENT": str(settings.front.uploads_per_client),
    }


def placeholders(text: str) -> set[str]:
    """The ${NAMES} a template needs."""
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every ${NAME} replaced; a name without a value is an error."""
    missing = placeholders(text) - set(values)
    if missing:
        raise NginxError(f"no value for {', '.join(sorted(missing))} in the nginx template")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def main_conf(paths: NginxPaths) -> str:
    """nginx.conf for ``inferq up``: foreground, every path under home, the site included."""
    temp = {
        name: _quote(paths.temp / name) for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")
    }
    # nginx started as root would run its workers as "nobody", who cannot enter a private
    # home; they run as the user supervisord runs everything else as.
    user = "user root;\n" if os.getuid() == 0 else ""
    return f"""\
# Written by `inferq up`; edit nginx/inferq.conf.template instead.
{user}daemon off;
worker_processes auto;
pid {_quote(paths.pidfile)};
error_log {_quote(paths.error_log)} warn;
# A graceful stop (SIGQUIT) waits for open long-polls at most this long.
worker_shutdown_timeout 10s;
# Each waiting long-poll holds two connections (client and API node), and one worker may
# accept most of them: room for 5,000 long-polls and the traffic beside them in each worker.
worker_rlimit_nofile 32768;

events {{
    worker_connections 16384;
}}

http {{
    default_type application/octet-stream;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {_quote(paths.site)};
}}
"""


def write_config(settings: Settings, paths: NginxPaths, node_ports: Sequence[int]) -> None:
    """Render the template for ``node_ports`` and write nginx.conf beside it."""
    for folder in (paths.prefix, paths.temp, paths.access_log.parent):
        folder.mkdir(parents=True, exist_ok=True)
    site = render(TEMPLATE.read_text(), local_values(settings, paths, node_ports))
    paths.site.write_text(site)
    paths.conf.write_text(main_conf(paths))


def command(binary: str, paths: NginxPaths) -> tuple[str, ...]:
    """The command that runs nginx on ``paths``: its own prefix, config and startup error log."""
    return (binary, "-p", f"{paths.prefix}/", "-c", str(paths.conf), "-e", str(paths.error_log))


def check_config(binary: str, paths: NginxPaths) -> None:
    """Run ``nginx -t`` on the written config; raise :class:`NginxError` with its complaint."""
    result = subprocess.run(
        [*command(binary, paths), "-t", "-q"],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise NginxError(f"nginx rejects {paths.conf}: {result.stderr.strip()}")


def _quote(path: Path) -> str:
    # nginx reads a double-quoted string with backslash escapes: spaces and ; are safe in it.
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'
