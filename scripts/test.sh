#!/usr/bin/env bash
# The tests: set up what is missing, then check notebooks are clean, the package matches the notebooks,
# run every notebook's inline tests (nbdev-test) and the pytest suite (tests/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
source .venv/bin/activate
t0=$SECONDS
fingerprint() { find "$@" -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum; }

before=$(fingerprint nbs); nbdev-clean; after=$(fingerprint nbs)
if [ "$before" != "$after" ]; then echo "FAIL: notebooks were not clean (nbdev-clean has cleaned them now; review and commit)" >&2; exit 1; fi
echo "ok: notebooks are clean"
before=$(fingerprint asr_kd_nb); nbdev-export; after=$(fingerprint asr_kd_nb)
if [ "$before" != "$after" ]; then echo "FAIL: asr_kd_nb/ did not match the notebooks (nbdev-export has updated it; review and commit)" >&2; exit 1; fi
echo "ok: package in sync with notebooks"

nbdev-test --timing
asr-kd readme --check
echo "ok: nbdev-test ($((SECONDS - t0)) s so far)"
python -m pytest tests -q -p no:cacheprovider --durations=10 "$@"
echo "all checks passed in $((SECONDS - t0)) s"
