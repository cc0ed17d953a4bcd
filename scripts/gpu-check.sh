#!/usr/bin/env bash
# The GPU check: the smoke study on the device, `asr-kd bench kd` (P1, P2), KD trials per hour at W = 1, 2, 4, 8 workers
# sharing the device against two CPU cores, and peak memory -- every figure in ONE JSON file (printed at the end).
# Run it after the README's set-up (`bash scripts/setup.sh`); it uses the project's .venv.
#
#   bash scripts/gpu-check.sh --prepare            # where eSpeak NG is: stages 00-02 of the smoke study into runs/gpu-check
#   bash scripts/gpu-check.sh                      # on the GPU machine: the rest, with device=cuda (the default)
#   bash scripts/gpu-check.sh --device cpu         # anywhere, to test the check itself (the study up to 03_teacher, ~2 min)
#
# Options: --out FILE (the JSON; default runs/gpu-check.json, the executed notebooks beside it as FILE-notebooks.tgz),
# --run-dir DIR (prepared run directory, default runs/gpu-check; copied to a scratch folder first, so it stays as it is),
# --stages ..., --seconds S, --steps N, --workers "1 2 4 8", --no-large (P1 without the random wav2vec2-large teacher),
# --wheels DIR (a machine that cannot reach the package registries: install the cp312 wheels of the requirements.lock
# versions in DIR into a scratch folder, beside the machine's own torch; see scripts/gpu-env.sh). PYTHON=... picks another
# interpreter than .venv/bin/python. A failed step is named (gpu-check: STEP x FAILED) and the exit status is 1; the JSON
# still holds every step done.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEVICE=cuda; PREPARE=0; RUN_DIR=runs/gpu-check; OUT_FILE=runs/gpu-check.json; STAGES=""; SECONDS_=""; STEPS=""
WORKERS="1 2 4 8"; LARGE=""; WHEELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2;;
    --prepare) PREPARE=1; shift;;
    --run-dir) RUN_DIR=$2; shift 2;;
    --out) OUT_FILE=$2; shift 2;;
    --stages) STAGES=$2; shift 2;;
    --seconds) SECONDS_=$2; shift 2;;
    --steps) STEPS=$2; shift 2;;
    --workers) WORKERS=$2; shift 2;;
    --no-large) LARGE=--no-large; shift;;
    --wheels) WHEELS=$2; shift 2;;
    -h|--help) sed -n '2,16p' "$0"; exit 0;;
    *) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
T0=$(date +%s)
say() { echo "gpu-check [$(( $(date +%s) - T0 )) s]: $*" >&2; }
fail() {   # name the step; leave a JSON saying which step failed when none was written yet
  echo "gpu-check: STEP $1 FAILED: $2" >&2
  if [ $PREPARE = 0 ] && [ ! -f "$OUT_FILE" ]; then mkdir -p "$(dirname "$OUT_FILE")"
    printf '{"failed": ["%s"], "error": "%s"}\n' "$1" "$(echo "$2" | tr -d '"\\' | tr '\n' ' ')" > "$OUT_FILE"; fi
  exit 1
}

# --- the interpreter: .venv (or $PYTHON; or the wheels of --wheels) -------------------------------------------------------
source "$ROOT/scripts/gpu-env.sh"

# --- prepare: the CPU-only stages (eSpeak NG corpus, clustering, splits), to copy to a GPU machine without eSpeak NG -------
prepare() {
  local cfg; cfg=$(mktemp --suffix .json); echo '{"preset": "smoke", "device": "cpu"}' > "$cfg"
  say "preparing $RUN_DIR (stages 00-02 of the smoke study on the CPU)"
  $PY -m asr_kd_nb.pipeline run --config "$cfg" --run-dir "$RUN_DIR" --stages 00_corpus 01_clustering 02_splits --no-progress \
    || fail prepare "asr-kd run --stages 00_corpus 01_clustering 02_splits (needs espeak-ng; without it, prepare $RUN_DIR where it is and copy it here)"
  rm -f "$cfg"; say "prepared $RUN_DIR ($(du -sh "$RUN_DIR" | cut -f1))"
}
if [ $PREPARE = 1 ]; then prepare; exit 0; fi

# --- the check ------------------------------------------------------------------------------------------------------------
[ -f "$RUN_DIR/config.json" ] || prepare    # not prepared yet: make it here (needs espeak-ng)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cp -r "$RUN_DIR"/. "$WORK"/ || fail prepare "copy of $RUN_DIR"
mkdir -p "$(dirname "$OUT_FILE")"
EXTRA=()
if [ "$DEVICE" = cpu ]; then   # the CPU run tests the check: the study up to the teacher cache (a 40-step teacher), short windows
  STAGES=${STAGES:-"00_corpus 01_clustering 02_splits 03_teacher"}; SECONDS_=${SECONDS_:-4}; STEPS=${STEPS:-8}
  EXTRA=(--p1-steps 1 --set teacher.max_steps=40 teacher.max_minutes=0.25)
else
  SECONDS_=${SECONDS_:-10}; STEPS=${STEPS:-20}
fi
say "checking on $DEVICE in $WORK; figures into $OUT_FILE"
$PY -m asr_kd_nb.bench gpu-check --run-dir "$WORK" --out "$OUT_FILE" --device "$DEVICE" ${STAGES:+--stages $STAGES} \
    --seconds "$SECONDS_" --steps "$STEPS" --workers $WORKERS $LARGE "${EXTRA[@]}" 2>&1 | grep -v 'Kernel is running over TCP'
rc=${PIPESTATUS[0]}
if [ -d "$WORK/notebooks" ]; then
  tar czf "${OUT_FILE%.json}-notebooks.tgz" -C "$WORK" notebooks stages.json timings.json 2>/dev/null
  say "executed notebooks in ${OUT_FILE%.json}-notebooks.tgz"
fi
say "done (exit $rc); JSON in $OUT_FILE"
exit $rc
