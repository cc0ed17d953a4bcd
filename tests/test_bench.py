"""`asr-kd bench` lists every benchmark and each benchmark module stays small; the GPU scripts run the project's .venv; no file
of the repository describes the machine it was measured on as borrowed or takes an output folder from an environment variable."""
import contextlib, importlib, io, json, os, re, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT, asr_kd

MAX_LINES = 400


def test_bench_help_lists_every_benchmark():
    from asr_kd_nb.bench import BENCHMARKS
    r = asr_kd('bench', '--help', timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for name, (_, description) in BENCHMARKS.items():
        assert re.search(rf'^\s+{re.escape(name)}\s+{re.escape(description)}$', r.stdout, re.M), (name, r.stdout)
    # every bench module runs a benchmark of the command, and every benchmark's function exists
    assert {t.split(':')[0] for t, _ in BENCHMARKS.values()} == {p.stem for p in (ROOT/'asr_kd_nb').glob('bench*.py')}
    for name, (target, _) in BENCHMARKS.items():
        mod, fn = target.split(':')
        main = getattr(importlib.import_module(f'asr_kd_nb.{mod}'), fn)
        with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as e: main(['--help'])
        assert e.value.code == 0 and f'asr-kd bench {name}' in out.getvalue(), (name, out.getvalue())


def test_no_benchmark_module_over_400_lines():
    sizes = {p.name: len(p.read_text(encoding='utf-8').splitlines()) for p in (ROOT/'asr_kd_nb').glob('bench*.py')}
    assert len(sizes) >= 6, sizes
    assert max(sizes.values()) <= MAX_LINES, {k: v for k, v in sizes.items() if v > MAX_LINES}


def _source_env_script(root, python=None):
    "Source scripts/gpu-env.sh for repository root `root`; its stdout+stderr and exit code."
    script = 'say() { echo "say: $*"; }; fail() { echo "FAIL $1: $2"; exit 1; }; ROOT=$1; WHEELS=; source scripts/gpu-env.sh; echo "PY=$PY"'
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'} | ({'PYTHON': str(python)} if python else {})
    r = subprocess.run(['bash', '-c', script, 'bash', str(root)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return r.stdout + r.stderr, r.returncode


def test_gpu_scripts_run_the_project_venv(tmp_path):
    venv_python = tmp_path/'.venv'/'bin'/'python'; venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n'); venv_python.chmod(0o755)
    out, rc = _source_env_script(tmp_path)
    assert rc == 0 and out.strip().endswith(f'PY={venv_python}'), out          # .venv, not the system python3
    bare = tmp_path/'bare-python'; bare.write_text('#!/bin/sh\nexit 1\n'); bare.chmod(0o755)   # an interpreter without the packages
    out, rc = _source_env_script(tmp_path, python=bare)
    assert rc == 1 and "run 'bash scripts/setup.sh' first" in out and '--wheels DIR' in out, out
    assert '/work/' not in out


# the patterns are written so that this file does not match them itself
FORBIDDEN = {
    'a borrowed GPU': re.compile(r'\ble[n]t\b', re.I),
    'an output folder from the OUT variable': re.compile(r'\$\{?OUT\b|environ(\.get\(|\[)\s*[\'"]OUT[\'"]'),
}


def _repository_files() -> list[Path]:
    r = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT, capture_output=True, text=True)
    if r.returncode: pytest.skip(f'not a git checkout: {r.stderr.strip()}')
    return [ROOT/f for f in r.stdout.splitlines() if (ROOT/f).is_file()]


def test_the_project_speaks_only_of_itself():
    hits = []
    for p in _repository_files():
        data = p.read_bytes()
        if b'\0' in data: continue                                         # images and other binary files
        for n, line in enumerate(data.decode('utf-8', errors='replace').splitlines(), 1):
            hits += [f'{p.relative_to(ROOT)}:{n}: {what}: {line.strip()[:120]}' for what, rx in FORBIDDEN.items() if rx.search(line)]
    assert not hits, '\n'.join(hits)


def test_gpu_check_script_on_cpu(tmp_path, smoke_run):
    "The GPU check as a user runs it from a checkout after the set-up (its .venv, no PYTHON), on the CPU, kept small, on a prepared run."
    out = tmp_path/'gpu-check.json'
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    before = sorted(p.relative_to(smoke_run['dir']) for p in smoke_run['dir'].rglob('*'))
    r = subprocess.run(['bash', 'scripts/gpu-check.sh', '--device', 'cpu', '--run-dir', str(smoke_run['dir']), '--out', str(out),
                        '--workers', '1', '--seconds', '1', '--steps', '2', '--no-large'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res['failed'] == [] and res['environment']['device'] == 'cpu', res.get('failed')
    assert res['bench_kd']['P2']['ratio'] > 0 and res['trials_per_hour']['per_W']['1']['trials'] >= 1
    assert (tmp_path/'gpu-check-notebooks.tgz').exists()
    assert sorted(p.relative_to(smoke_run['dir']) for p in smoke_run['dir'].rglob('*')) == before   # it works on a copy
