# Sourced by scripts/gpu-check.sh and scripts/gpu-pruners.sh (not run on its own): the project's packages on a lent GPU
# machine -- the machine's own torch/numpy/transformers, our pure-Python and cp312 extras from .whl/ installed into /tmp/site,
# and the Jupyter kernel `asr-kd` registered under /tmp/jupyter (nothing outside /tmp is touched).
# Needs: ROOT (repository root), PY (python), and the caller's `say MSG` and `fail STEP MSG` functions.
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
if ! $PY -c 'import optuna, papermill, jiwer, soundfile, ipykernel, fastcore, nbdev' 2>/dev/null; then
  ls "$ROOT"/.whl/*.whl >/dev/null 2>&1 || fail install "packages missing and no wheels in .whl/ (download them as /work/.library/device/README.md says: cp312 manylinux wheels of the requirements.lock versions)"
  say "installing $(ls "$ROOT"/.whl/*.whl | wc -l) wheels into /tmp/site"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl \
    || fail install "pip install of .whl/*.whl"
  export PYTHONPATH=/tmp/site:$PYTHONPATH
  $PY -c 'import optuna, papermill, jiwer, soundfile, ipykernel, fastcore, nbdev' || fail install "imports after installing the wheels"
fi
if ! $PY -c 'from jupyter_client.kernelspec import KernelSpecManager as K; K().get_kernel_spec("asr-kd")' 2>/dev/null; then
  say "registering the Jupyter kernel asr-kd under /tmp/jupyter"
  $PY -m ipykernel install --prefix /tmp/jupyter --name asr-kd --display-name 'Python (asr-kd)' >/dev/null || fail kernel "ipykernel install"
  export JUPYTER_PATH=/tmp/jupyter/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
