#!/usr/bin/env bash
# The GPU check: the smoke study on the device, `asr-kd bench kd` (P1, P2), KD trials per hour at W = 1, 2, 4, 8 workers
# sharing the device against two CPU cores, and peak memory -- every figure in ONE JSON file (printed at the end).
#
#   bash scripts/gpu-check.sh --prepare            # here (CPU, eSpeak NG): stages 00-02 of the smoke study into runs/gpu-check
#   bash scripts/gpu-check.sh                      # on the GPU machine: the rest, with device=cuda (the default)
#   bash scripts/gpu-check.sh --device cpu         # here, to test the check itself (< 3 min on an idle 2-core machine: the study up to 03_teacher)
#
# Options: --run-dir DIR (prepared run directory, default runs/gpu-check; it is copied to a scratch folder first, so the
# checkout stays clean), --out FILE (default $OUT/gpu-check.json, else runs/gpu-check.json), --stages ..., --seconds S,
# --steps N, --workers "1 2 4 8", --no-large. On a machine that lacks the project's packages, the wheels in .whl/ are installed
# into /tmp/site and the Jupyter kernel `asr-kd` is registered under /tmp/jupyter (nothing outside /tmp is touched).
# A failed step is named (gpu-check: STEP x FAILED) and the exit status is 1; the JSON still holds every step done.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEVICE=cuda; PREPARE=0; RUN_DIR=runs/gpu-check; OUTF=""; STAGES=""; SECONDS_=""; STEPS=""; WORKERS="1 2 4 8"; LARGE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2;;
    --prepare) PREPARE=1; shift;;
    --run-dir) RUN_DIR=$2; shift 2;;
    --out) OUTF=$2; shift 2;;
    --stages) STAGES=$2; shift 2;;
    --seconds) SECONDS_=$2; shift 2;;
    --steps) STEPS=$2; shift 2;;
    --workers) WORKERS=$2; shift 2;;
    --no-large) LARGE=--no-large; shift;;
    -h|--help) sed -n '2,16p' "$0"; exit 0;;
    *) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
PY=${PYTHON:-python3}
T0=$(date +%s)
if [ -z "$OUTF" ] && [ $PREPARE = 0 ]; then
  if [ -n "${OUT:-}" ]; then OUTF=$OUT/gpu-check.json; else OUTF=runs/gpu-check.json; fi
fi
say() { echo "gpu-check [$(( $(date +%s) - T0 )) s]: $*" >&2; }
fail() {   # name the step; leave a JSON saying which step failed when none was written yet
  echo "gpu-check: STEP $1 FAILED: $2" >&2
  if [ -n "$OUTF" ] && [ ! -f "$OUTF" ]; then mkdir -p "$(dirname "$OUTF")"
    printf '{"failed": ["%s"], "error": "%s"}\n' "$1" "$(echo "$2" | tr -d '"\\' | tr '\n' ' ')" > "$OUTF"; fi
  exit 1
}

# --- packages: the machine's own torch/numpy/transformers, our pure-Python and cp312 extras from .whl/ ---------------------
source "$ROOT/scripts/gpu-env.sh"

# --- prepare: the CPU-only stages (eSpeak NG corpus, clustering, splits) here, carried to the GPU machine ------------------
prepare() {
  local cfg; cfg=$(mktemp --suffix .json); echo '{"preset": "smoke", "device": "cpu"}' > "$cfg"
  say "preparing $RUN_DIR (stages 00-02 of the smoke study on the CPU)"
  $PY -m asr_kd_nb.pipeline run --config "$cfg" --run-dir "$RUN_DIR" --stages 00_corpus 01_clustering 02_splits --no-progress \
    || fail prepare "asr-kd run --stages 00_corpus 01_clustering 02_splits (needs espeak-ng; on the GPU machine carry a prepared $RUN_DIR)"
  rm -f "$cfg"; say "prepared $RUN_DIR ($(du -sh "$RUN_DIR" | cut -f1)); carry it with .whl"
}
if [ $PREPARE = 1 ]; then prepare; exit 0; fi

# --- the check ------------------------------------------------------------------------------------------------------------
[ -f "$RUN_DIR/config.json" ] || prepare    # not carried: make it here (works where espeak-ng is, i.e. not on the GPU machine)
WORK=$(mktemp -d /tmp/gpu-check-run.XXXXXX)
cp -r "$RUN_DIR"/. "$WORK"/ || fail prepare "copy of $RUN_DIR"
mkdir -p "$(dirname "$OUTF")"
EXTRA=()
if [ "$DEVICE" = cpu ]; then   # the CPU run tests the check: the study up to the teacher cache (a 40-step teacher), short windows
  STAGES=${STAGES:-"00_corpus 01_clustering 02_splits 03_teacher"}; SECONDS_=${SECONDS_:-4}; STEPS=${STEPS:-8}
  EXTRA=(--p1-steps 1 --set teacher.max_steps=40 teacher.max_minutes=0.25)
else
  SECONDS_=${SECONDS_:-10}; STEPS=${STEPS:-20}
fi
say "checking on $DEVICE in $WORK; figures into $OUTF"
$PY -m asr_kd_nb.bench gpu-check --run-dir "$WORK" --out "$OUTF" --device "$DEVICE" ${STAGES:+--stages $STAGES} \
    --seconds "$SECONDS_" --steps "$STEPS" --workers $WORKERS $LARGE "${EXTRA[@]}" 2>&1 | grep -v 'Kernel is running over TCP'
rc=${PIPESTATUS[0]}
[ -d "${OUT:-}" ] && [ -d "$WORK/notebooks" ] && tar czf "$OUT/gpu-check-notebooks.tgz" -C "$WORK" notebooks stages.json timings.json 2>/dev/null
say "done (exit $rc); JSON in $OUTF"
exit $rc
