"Shared fixtures: one smoke-scale study run per test session, made through the `asr-kd` command as a user would."
import os, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ASR_KD = [sys.executable, '-m', 'asr_kd_nb.pipeline']

def asr_kd(*args, timeout=1800, env=None, **kw):
    "Run the `asr-kd` command; returns the CompletedProcess (stdout+stderr captured as text)."
    e = {**os.environ, **(env or {})}
    return subprocess.run([*ASR_KD, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT, **kw)

@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory):
    "A run directory with the whole smoke study done (every stage that exists), plus the two runs' outputs."
    run_dir = tmp_path_factory.mktemp('smoke')/'run'
    t = time.time()
    first = asr_kd('run', '--preset', 'smoke', '--run-dir', os.path.relpath(run_dir, ROOT), '--no-progress')  # relative, as users type it
    assert first.returncode == 0, first.stderr[-4000:]
    wall = time.time() - t
    second = asr_kd('run', '--preset', 'smoke', '--run-dir', run_dir, '--no-progress')
    assert second.returncode == 0, second.stderr[-4000:]
    return {'dir': run_dir, 'first': first, 'second': second, 'wall_s': wall}
