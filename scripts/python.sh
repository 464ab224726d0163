# Sourced by scripts/setup, scripts/lint and scripts/test: the one interpreter they all use,
# so that the tests run where setup installed. In order: the active virtualenv's; ./.venv's
# (what scripts/setup makes when none is active); else python3 (or python) on PATH, which is
# where `scripts/setup --system` installs (CI).
inferq_python() {
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    echo "$VIRTUAL_ENV/bin/python"
  elif [ -x .venv/bin/python ]; then
    echo "$PWD/.venv/bin/python"
  else
    command -v python3 || command -v python || {
      echo "error: no python3 (or python) on PATH; install Python 3.11 or newer" >&2
      return 1
    }
  fi
}
