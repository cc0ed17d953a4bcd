#!/usr/bin/env bash
# P3 on a lent GPU: `compare_pruners` (asr_kd_nb.bench) -- one fresh study per pruner with the same sampler seed and number of
# trials on a run's teacher cache, W workers sharing the GPU, then each pruner's best retrained on the full data with 2 seeds.
#
#   bash scripts/gpu-pruners.sh --pack RUN_DIR DEST     # here: copy what the trials need (config.json, splits.json, cache/,
#                                                       # teacher/teacher.json, corpus manifests) into DEST; prints its MiB
#   bash scripts/gpu-pruners.sh RUN_DIR                 # on the GPU machine: all five pruners, 24 trials each, 8 workers, cuda
#   bash scripts/gpu-pruners.sh RUN_DIR --device cpu --n-trials 4 --workers 2 --pruners "none median" --set kd.epochs=0.25
#
# Options: --device D (default cuda), --n-trials N (24), --workers W (8), --pruners "..." (all five), --checkpoints C (4),
# --set SECTION.KEY=JSON ... (overrides of the scratch runs), --out DIR (default $OUT, else RUN_DIR/bench). The carried run
# directory is copied to a scratch folder first (the checkout stays clean); pruners.json and pruners.csv go to --out.
# Packages are installed from .whl/ when missing (scripts/gpu-env.sh, shared with gpu-check.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
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

[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || fail args "usage: gpu-pruners.sh RUN_DIR [options] | --pack RUN_DIR DEST (see --help)"
[ "$1" = -h ] || [ "$1" = --help ] && { sed -n '2,14p' "$0"; exit 0; }
RUN_DIR=$1; shift
DEVICE=cuda; NTRIALS=24; WORKERS=8; PRUNERS="none median wilcoxon successive_halving hyperband"; CHECKPOINTS=4; SETS=(); OUTD=${OUT:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2;;
    --n-trials) NTRIALS=$2; shift 2;;
    --workers) WORKERS=$2; shift 2;;
    --pruners) PRUNERS=$2; shift 2;;
    --checkpoints) CHECKPOINTS=$2; shift 2;;
    --out) OUTD=$2; shift 2;;
    --set) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do SETS+=("$1"); shift; done;;
    -h|--help) sed -n '2,14p' "$0"; exit 0;;
    *) fail args "unknown option $1 (see --help)";;
  esac
done
[ -f "$RUN_DIR/config.json" ] && [ -d "$RUN_DIR/cache" ] || fail args "$RUN_DIR needs config.json and cache/ (make it with --pack here)"
source "$ROOT/scripts/gpu-env.sh"
WORK=$(mktemp -d /tmp/gpu-pruners-run.XXXXXX)
cp -r "$RUN_DIR"/. "$WORK"/ || fail copy "copy of $RUN_DIR"
say "P3 on $DEVICE: pruners [$PRUNERS], $NTRIALS trials each, $WORKERS workers, $CHECKPOINTS reports per student; run copy $WORK"
$PY -m asr_kd_nb.bench pruners --run-dir "$WORK" --device "$DEVICE" --n-trials "$NTRIALS" --workers "$WORKERS" \
    --pruners $PRUNERS --checkpoints "$CHECKPOINTS" ${OUTD:+--out "$OUTD"} ${SETS[@]+--set "${SETS[@]}"} 2>&1 \
    | grep -v 'Kernel is running over TCP'
rc=${PIPESTATUS[0]}
[ -z "$OUTD" ] && { mkdir -p "$RUN_DIR/bench"; cp "$WORK"/bench/pruners.* "$RUN_DIR/bench/" 2>/dev/null; OUTD=$RUN_DIR/bench; }
say "done (exit $rc); pruners.json and pruners.csv in $OUTD"
exit $rc
