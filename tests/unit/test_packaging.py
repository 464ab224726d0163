"""A plain (non-editable) install carries what inferq reads at run time: nginx's template,
the migrations, the operator's page."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCE = (
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "var",
    "__pycache__",
    "*_cache",
    "node_modules",
    ".venv",  # what scripts/setup makes: torch and all, copied twice through lib64 -> lib
    "test-artifacts",
)


def test_what_git_ignores_is_not_copied_as_source() -> None:
    """Catches: a directory that scripts/setup or the tests make in the checkout (`.venv`)
    copied whole before every wheel build. Mutation tried: `.venv` out of NOT_SOURCE (fails)."""
    ignored = [
        line.strip("/")
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in ignored
    for name in ignored:
        assert shutil.ignore_patterns(*NOT_SOURCE)(str(ROOT), [name]), name


def test_a_wheel_install_renders_nginx_and_finds_its_migrations(tmp_path: Path) -> None:
    # Given inferq built as a wheel (from a clean copy: setuptools reuses a stale build/) and
    # unpacked into a folder of its own
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    dist = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("inferq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "nginx/inferq.conf.template",
        "db/migrations/env.py",
        "api/static/dashboard.html",
    } <= names
    assert any(n.startswith("db/migrations/versions/") for n in names)
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # what pip install --target does for a pure-Python wheel
    # When that install (not this source tree) renders nginx's config and looks up migrations
    script = f"""
import sys; sys.path.insert(0, {str(site)!r})
from pathlib import Path
import inferq.local.nginx as n, db.migrate as m
from inferq.core.settings import Settings
assert n.__file__.startswith({str(site)!r}), n.__file__
paths = n.NginxPaths(Path({str(tmp_path / "home")!r}))
n.write_config(Settings.of(home=paths.home), paths, [9001, 9002])
print(paths.site.read_text().count("server 127.0.0.1:900"), sorted(p.name for p in m.MIGRATIONS.iterdir())[:2])
"""
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    # Then both are found inside the install
    assert run.returncode == 0, run.stderr
    upstreams, migration_files = run.stdout.split(" ", 1)
    assert upstreams == "2" and "env.py" in migration_files, run.stdout
