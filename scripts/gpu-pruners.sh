#!/usr/bin/env bash
# P3 on a GPU machine: `compare_pruners` (asr_kd_nb.bench_pruners) -- one fresh study per pruner with the same sampler seed and
# number of trials on a run's teacher cache, W workers sharing the GPU, then each pruner's best retrained on the full data with
# 2 seeds. Run it after the README's set-up (`bash scripts/setup.sh`); it uses the project's .venv.
#
#   bash scripts/gpu-pruners.sh --pack RUN_DIR DEST     # where the run is: copy what the trials need (config.json, splits.json,
#                                                       # cache/, teacher/teacher.json, corpus manifests) into DEST; prints its MiB
#   bash scripts/gpu-pruners.sh RUN_DIR --out runs/p3   # on the GPU machine: all five pruners, 24 trials each, 8 workers, cuda
#   bash scripts/gpu-pruners.sh RUN_DIR --device cpu --n-trials 4 --workers 2 --pruners "none median" --set kd.epochs=0.25
#
# Options: --device D (default cuda), --n-trials N (24), --workers W (8), --pruners "..." (all five), --checkpoints C (4),
# --set SECTION.KEY=JSON ... (overrides of the scratch runs), --out DIR (pruners.json and pruners.csv; default RUN_DIR/bench),
# --wheels DIR (a machine that cannot reach the package registries: wheels of the requirements.lock versions, see
# scripts/gpu-env.sh). RUN_DIR is copied to a scratch folder first, so it stays as it is. PYTHON=... picks another interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
say() { echo "gpu-pruners [$(( $(date +%s) - T0 )) s]: $*" >&2; }
fail() { echo "gpu-pruners: STEP $1 FAILED: $2" >&2; exit 1; }

if [ "${1:-}" = --pack ]; then
  [ $# -eq 3 ] || fail pack "usage: --pack RUN_DIR DEST"
  SRC=$2; DEST=$3
  for f in config.json splits.json cache; do [ -e "$SRC/$f" ] || fail pack "$SRC/$f is missing (run the stages up to 03_teacher first)"; done
  mkdir -p "$DEST/teacher" "$DEST/corpus" || fail pack "mkdir $DEST"
  cp "$SRC/config.json" "$SRC/splits.json" "$DEST/" && cp -r "$SRC/cache" "$DEST/" || fail pack "copy of config, splits and cache"
  [ -f "$SRC/teacher/teacher.json" ] && cp "$SRC/teacher/teacher.json" "$DEST/teacher/"
  [ -f "$SRC/report/summary.json" ] && mkdir -p "$DEST/report" && cp "$SRC/report/summary.json" "$DEST/report/"   # the noise ceiling
  find "$SRC/corpus" -maxdepth 2 -name '*.jsonl' -o -maxdepth 2 -name 'report.json' 2>/dev/null | while read -r m; do
    rel=${m#"$SRC"/}; mkdir -p "$DEST/$(dirname "$rel")"; cp "$m" "$DEST/$rel"; done
  say "packed $SRC into $DEST: $(du -sm "$DEST" | cut -f1) MiB ($(du -sb "$DEST" | cut -f1) bytes)"
  exit 0
fi

case "${1:-}" in -h|--help) sed -n '2,14p' "$0"; exit 0;; esac
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || fail args "usage: gpu-pruners.sh RUN_DIR [options] | --pack RUN_DIR DEST (see --help)"
RUN_DIR=$1; shift
DEVICE=cuda; NTRIALS=24; WORKERS=8; PRUNERS="none median wilcoxon successive_halving hyperband"; CHECKPOINTS=4; SETS=(); OUTD=$RUN_DIR/bench; WHEELS=
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2;;
    --n-trials) NTRIALS=$2; shift 2;;
    --workers) WORKERS=$2; shift 2;;
    --pruners) PRUNERS=$2; shift 2;;
    --checkpoints) CHECKPOINTS=$2; shift 2;;
    --out) OUTD=$2; shift 2;;
    --wheels) WHEELS=$2; shift 2;;
    --set) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do SETS+=("$1"); shift; done;;
    -h|--help) sed -n '2,14p' "$0"; exit 0;;
    *) fail args "unknown option $1 (see --help)";;
  esac
done
[ -f "$RUN_DIR/config.json" ] && [ -d "$RUN_DIR/cache" ] || fail args "$RUN_DIR needs config.json and cache/ (pack a finished run with --pack RUN_DIR DEST)"
source "$ROOT/scripts/gpu-env.sh"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-pruners-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cp -r "$RUN_DIR"/. "$WORK"/ || fail copy "copy of $RUN_DIR"
say "P3 on $DEVICE: pruners [$PRUNERS], $NTRIALS trials each, $WORKERS workers, $CHECKPOINTS reports per student; run copy $WORK"
$PY -m asr_kd_nb.bench pruners --run-dir "$WORK" --device "$DEVICE" --n-trials "$NTRIALS" --workers "$WORKERS" \
    --pruners $PRUNERS --checkpoints "$CHECKPOINTS" --out "$OUTD" ${SETS[@]+--set "${SETS[@]}"} 2>&1 \
    | grep -v 'Kernel is running over TCP'
rc=${PIPESTATUS[0]}
say "done (exit $rc); pruners.json and pruners.csv in $OUTD"
exit $rc
