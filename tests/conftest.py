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

def refused_run(tmp_path, config:dict, timeout=300):
    "`asr-kd run --preset smoke` with `config` must be refused before any stage: exit 2, an `asr-kd: error:` line, no stage, no run directory."
    import json
    cfg = tmp_path/'c.json'; cfg.write_text(json.dumps(config))
    run = tmp_path/'run'
    t = time.time()
    r = asr_kd('run', '--preset', 'smoke', '--config', cfg, '--run-dir', run, '--no-progress', timeout=timeout)
    assert r.returncode == 2, r.stderr[-3000:]
    assert 'asr-kd: error:' in r.stderr and 'Traceback' not in r.stderr and ': running' not in r.stderr, r.stderr
    assert not run.exists()          # no stage output, not even the run directory (nor its lock)
    return r, time.time() - t

