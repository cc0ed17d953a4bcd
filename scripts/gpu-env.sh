# Sourced by scripts/gpu-check.sh and scripts/gpu-pruners.sh (not run on its own): the Python that runs the project.
#
# The interpreter is $PYTHON when set, else the project's .venv (made by `bash scripts/setup.sh`, as the README says), else
# python3. With WHEELS set (the scripts' --wheels DIR, for a machine that cannot reach the package registries), the wheels in
# DIR -- cp312 manylinux wheels of the requirements.lock versions, beside the machine's own torch, numpy and transformers --
# are installed into a scratch folder and the Jupyter kernel `asr-kd` is registered there; nothing else is touched.
# Needs: ROOT (repository root), WHEELS (empty: none), and the caller's `say MSG` and `fail STEP MSG` functions. Sets PY.
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
SCRATCH=${TMPDIR:-/tmp}/asr-kd-$(id -u)
PACKAGES='import optuna, papermill, jiwer, soundfile, ipykernel, fastcore, nbdev, torch'
if [ -n "${WHEELS:-}" ]; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || fail install "--wheels $WHEELS: no .whl files there"
  say "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SCRATCH/site"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SCRATCH/site" "$WHEELS"/*.whl \
    || fail install "pip install of $WHEELS/*.whl"
  export PYTHONPATH=$SCRATCH/site:$PYTHONPATH HF_HUB_OFFLINE=1   # such a machine cannot reach the model hub either
fi
$PY -c "$PACKAGES" 2>/dev/null || fail install "$PY lacks the project's packages: run 'bash scripts/setup.sh' first (it makes .venv), \
set PYTHON to an interpreter that has them, or pass --wheels DIR on a machine that cannot reach the package registries"
if ! $PY -c 'from jupyter_client.kernelspec import KernelSpecManager as K; K().get_kernel_spec("asr-kd")' 2>/dev/null; then
  say "registering the Jupyter kernel asr-kd under $SCRATCH/jupyter"
  $PY -m ipykernel install --prefix "$SCRATCH/jupyter" --name asr-kd --display-name 'Python (asr-kd)' >/dev/null || fail kernel "ipykernel install"
  export JUPYTER_PATH=$SCRATCH/jupyter/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
say "python: $PY"
