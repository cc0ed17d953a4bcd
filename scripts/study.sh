#!/usr/bin/env bash
# The main job: set up what is missing, then run the whole study on the embedded default corpus.
# Usage: bash scripts/study.sh [RUN_DIR] [extra asr-kd run options]   (default RUN_DIR: runs/default)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
run_dir="${1:-runs/default}"; shift || true
.venv/bin/asr-kd run --preset default --run-dir "$run_dir" "$@"
echo "results: $(cd "$run_dir" && pwd)  (executed notebooks in notebooks/, timings in timings.json)"
