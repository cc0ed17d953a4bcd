#!/usr/bin/env bash
# Set up whatever is missing, idempotently: system packages, the .venv with pinned packages, the Jupyter kernel `asr-kd`.
# Sourced by scripts/study.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# System packages: eSpeak NG (embedded corpus), festvox-ru (its recorded speech) and fortunes-ru (its prose), PostgreSQL (distributed-search test), Chromium (HTML report test).
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
[ -f /usr/share/festival/voices/russian/msu_ru_nsh_clunits/etc/txt.done.data ] || need+=(festvox-ru)
[ -d /usr/share/games/fortunes/ru ] || need+=(fortunes-ru)
{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || need+=(postgresql)
{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "setup: please install as root: apt-get install -y ${need[*]}" >&2; exit 1
  fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Python environment: .venv with every package pinned by requirements.lock; reinstalled when pyproject/lock change.
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($py --version)" >&2
  "$py" -m venv .venv
fi
stamp=".venv/.asr-kd-installed"
want="$(cat pyproject.toml requirements.lock setup.py | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned Python packages into .venv (first time: a few minutes, ~7 GB with torch's CUDA libraries)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c requirements.lock -e '.[dev]'
  echo "$want" > "$stamp"
fi

# Jupyter kernel for papermill and JupyterLab, registered inside the environment.
if [ ! -d .venv/share/jupyter/kernels/asr-kd ]; then
  .venv/bin/python -m ipykernel install --sys-prefix --name asr-kd --display-name "Python (asr-kd)" >/dev/null
fi

# JupyterLab from this environment saves notebooks the way `nbdev-clean` leaves them (asr_kd_nb.pipeline.clean_on_save).
hook=.venv/etc/jupyter/jupyter_server_config.d/asr-kd-clean-on-save.json
if [ ! -f "$hook" ]; then
  mkdir -p "$(dirname "$hook")"
  echo '{"ContentsManager": {"pre_save_hook": "asr_kd_nb.pipeline.clean_on_save"}}' > "$hook"
fi
