"""nginx in `inferq up`: the rendered config, nginx's own check of it, and what the stack runs."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from inferq.core.errors import ConfigError
from inferq.core.settings import Settings
from inferq.local import nginx
from inferq.local.stack import Front, StackPaths, plan_front, programs
from inferq.local.supervise import supervisord_conf
from tests.services import CI

LAUNCHER = ("/opt/py/bin/python", "-m", "inferq")


def rendered(settings: Settings, home: Path, ports: list[int]) -> str:
    paths = nginx.NginxPaths(home)
    nginx.write_config(settings, paths, ports)
    return paths.site.read_text()


def directive(text: str, name: str) -> list[str]:
    """The arguments of every ``name ...;`` in ``text``, comments left out."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    return re.findall(rf"^\s*{name}\s+([^;{{\n]*);", "\n".join(lines), re.M)


def test_the_template_has_a_value_for_every_placeholder(tmp_path: Path) -> None:
    text = rendered(Settings(), tmp_path, [9001])
    assert "${" not in text
    # nginx's own variables are left for nginx
    assert "$binary_remote_addr" in text and "$request_id" in text


def test_the_rendered_site_follows_the_settings(tmp_path: Path) -> None:
    settings = Settings.of(
        port=9000, max_body_bytes=12345, max_wait_s=40, rate_limit_rps=7, rate_limit_burst=9
    )
    text = rendered(settings, tmp_path, [9001, 9002])

    assert directive(text, "listen") == ["127.0.0.1:9000"]
    servers = directive(text, "server")
    assert [s.split()[0] for s in servers] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert re.search(r"^\s*least_conn;", text, re.M)
    assert directive(text, "keepalive") == ["64"]
    # nginx refuses exactly the bodies the API refuses
    assert directive(text, "client_max_body_size")[0] == "12345"
    # and waits longer than the longest long-poll
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        assert int(directive(text, name)[0].rstrip("s")) > settings.api.max_wait_s
    assert "rate=7r/s" in directive(text, "limit_req_zone")[0]
    assert set(directive(text, "limit_req")) == {"zone=inferq_per_client burst=9 nodelay"}
    assert directive(text, "limit_req_status") == ["429"]
    # every location that sets headers passes the same request id on
    assert set(directive(text, "proxy_set_header X-Request-ID")) == {"$inferq_request_id"}


def test_only_batch_uploads_may_be_as_large_as_the_batch_limit(tmp_path: Path) -> None:
    text = rendered(Settings.of(max_body_bytes=12345, max_batch_bytes=67890), tmp_path, [9001])
    server, batches = text.split("location = /v1/batches {", 1)
    batches = batches.split("\n    }", 1)[0]

    # everything else keeps the job body limit; POST /v1/batches alone takes the batch limit
    assert directive(server, "client_max_body_size") == ["12345"]
    assert directive(batches, "client_max_body_size") == ["67890"]
    # taken whole by nginx before a node sees it (a slow client never holds a node), a few
    # uploads at once per address, and a long wait for the node to store it
    assert directive(batches, "proxy_request_buffering") == []
    assert directive(batches, "limit_conn") == ["inferq_uploads 8"]
    assert int(directive(batches, "proxy_read_timeout")[0].rstrip("s")) >= 600
    # and its problems are still problems: a location that sets error_page inherits none
    pages = {page.split()[0]: page.split()[-1] for page in directive(batches, "error_page")}
    assert pages == {
        "413": "@batch_too_large",
        "429": "@upload_limited",
        "502": "@bad_gateway",
        "504": "@gateway_timeout",
    }
    assert "larger than 67890 bytes" in text.split("location @batch_too_large", 1)[1]


def test_a_submission_already_sent_to_a_node_is_never_retried_on_another(tmp_path: Path) -> None:
    text = rendered(Settings(), tmp_path, [9001])
    (retry,) = directive(text, "proxy_next_upstream")
    assert "error" in retry.split() and "non_idempotent" not in retry


def test_nginx_keeps_every_file_under_home(tmp_path: Path) -> None:
    home = tmp_path / "my home"
    paths = nginx.NginxPaths(home)
    nginx.write_config(Settings(), paths, [9001])
    conf = paths.conf.read_text()

    assert directive(conf, "daemon") == ["off"]
    quoted = re.findall(r'"([^"]+)"', conf + paths.site.read_text())
    assert quoted and all(path.startswith(str(home)) for path in quoted if path.startswith("/"))
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert directive(conf, f"{kind}_temp_path")[0].startswith(f'"{home}')
    argv = nginx.command("/usr/sbin/nginx", paths)
    assert argv[argv.index("-p") + 1] == f"{paths.prefix}/"
    assert argv[argv.index("-e") + 1] == str(paths.error_log)


def test_nginx_itself_accepts_the_config(tmp_path: Path) -> None:
    binary = nginx.find_nginx("auto")
    if binary is None:
        if CI:
            pytest.fail("CI: nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed")
    paths = nginx.NginxPaths(tmp_path / "a 100% home")
    nginx.write_config(Settings.of(port=9000), paths, [9001, 9002, 9003])

    nginx.check_config(binary, paths)  # raises with nginx's complaint

    paths.site.write_text(paths.site.read_text().replace("least_conn;", "least_conn"))
    with pytest.raises(nginx.NginxError, match="nginx rejects"):
        nginx.check_config(binary, paths)


def test_a_placeholder_without_a_value_is_an_error() -> None:
    with pytest.raises(nginx.NginxError, match="NGINX_LISTEN"):
        nginx.render("listen ${NGINX_LISTEN};", {})


def test_with_nginx_the_stack_runs_api_nodes_on_loopback_behind_it_on_the_public_port(
    tmp_path: Path,
) -> None:
    settings = Settings.of(port=9000, api_nodes=3, workers=1, batch_workers=0)
    front = Front(nginx.command("/usr/sbin/nginx", nginx.NginxPaths(tmp_path)), (9101, 9102, 9103))

    progs = programs(settings, LAUNCHER, front)

    assert [p.name for p in progs] == [
        *("worker-1", "trainer", "webhooks", "beat", "api-1", "api-2", "api-3", "nginx")
    ]
    nodes = [p for p in progs if p.name.startswith("api-")]
    assert [p.argv[len(LAUNCHER) :] for p in nodes] == [
        ("api", "--host", "127.0.0.1", "--port", str(port)) for port in (9101, 9102, 9103)
    ]
    assert {p.group for p in nodes} == {"api"}
    proxy = progs[-1]
    assert proxy.argv == front.nginx_argv and proxy.stopsignal == "QUIT"
    # supervisord stops nginx first (it stops high priorities first), then the nodes
    assert proxy.priority > nodes[0].priority


def test_supervisord_reads_the_nginx_program_back(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    front = Front(nginx.command("/usr/sbin/nginx", paths.nginx_paths), (9101, 9102))
    progs = programs(Settings.of(api_nodes=2), LAUNCHER, front)
    paths.logs.mkdir()
    paths.conf.write_text(supervisord_conf(paths, progs))
    options = ServerOptions()
    options.configfile = str(paths.conf)
    options.process_config(do_usage=False)

    found = {p.name: p for g in options.process_group_configs for p in g.process_configs}
    assert shlex.split(found["nginx"].command) == list(front.nginx_argv)
    assert found["nginx"].stopsignal == 3  # SIGQUIT: nginx's graceful stop
    assert {g.name for g in options.process_group_configs} >= {"api", "nginx"}


def test_without_nginx_the_stack_says_so_and_serves_one_node_on_the_public_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a machine where nginx is nowhere to be found
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(nginx, "SEARCH_PATH", ())
    settings = Settings.of(port=9000, api_nodes=3)

    # When the stack plans what to run
    front = plan_front(settings, StackPaths(tmp_path))
    progs = programs(settings, LAUNCHER, front)

    # Then it says why, and one API node serves the public port itself
    assert front is None
    said = capsys.readouterr().err
    assert "nginx is not installed" in said and "one API node (not the 3 asked for)" in said
    api = [p for p in progs if "api" in p.argv]
    assert [(p.name, p.argv[-1]) for p in api] == [("api", "9000")]
    assert not any("nginx" in p.name for p in progs)


def test_nginx_can_be_turned_off_or_named(tmp_path: Path) -> None:
    assert plan_front(Settings.of(nginx="off"), StackPaths(tmp_path)) is None
    fake = tmp_path / "my-nginx"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    front = plan_front(Settings.of(nginx=str(fake), api_nodes=2), StackPaths(tmp_path))
    assert front is not None and front.nginx_argv[0] == str(fake)
    assert len(set(front.node_ports)) == 2
    with pytest.raises(ConfigError, match="not an executable"):
        nginx.find_nginx(str(tmp_path / "missing"))
    assert os.access(fake, os.X_OK)
