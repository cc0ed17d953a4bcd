"P3: the pruner registry, pruning that really saves CPU, and `compare_pruners` / `scripts/gpu-pruners.sh` on a smoke teacher cache."
import json, math, os, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest
import optuna
from asr_kd_nb.config import study_config, save_config
from asr_kd_nb.search import PRUNERS, SearchConfig, make_pruner, search_worker
from conftest import asr_kd, ROOT

def test_registry_builds_every_pruner():
    kinds = {'none': optuna.pruners.NopPruner, 'median': optuna.pruners.MedianPruner, 'wilcoxon': optuna.pruners.WilcoxonPruner,
             'successive_halving': optuna.pruners.SuccessiveHalvingPruner, 'hyperband': optuna.pruners.HyperbandPruner}
    assert set(PRUNERS) == set(kinds)
    for name, cls in kinds.items(): assert isinstance(make_pruner(SearchConfig(pruner=name)), cls)
    with pytest.raises(ValueError, match="search.pruner='asha'"): SearchConfig(pruner='asha')

def _burn(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds: pass

def bad_half_scorer(run_dir, fraction, cfg):
    "A toy objective: 8 reports of 20 CPU-ms each; configurations with learning_rate above 1e-4 are clearly bad from the start."
    def score(hp, report):
        bad = hp['learning_rate'] > 1e-4
        v = 0.9 if bad else 0.1 + 0.01 * abs(math.log10(hp['learning_rate']) + 5)
        for i in range(8): _burn(0.02); report(i, v)
        return {'gmean': v}
    score.n_reports = 8
    return score

@pytest.mark.parametrize('pruner', ['median', 'successive_halving'])
def test_pruning_saves_cpu_for_the_same_best(tmp_path, pruner):
    out = {}
    for p in ('none', pruner):
        d = tmp_path/p
        save_config(study_config('smoke', {'search': {'n_trials': 12, 'pruner': p, 'pruner_startup_trials': 2, 'enqueue_paper': False,
                                                      'sampler_startup_trials': 12}}, sections=['search']), d)
        out[p] = search_worker(d, 1.0, objective=bad_half_scorer)
    assert out[pruner]['counts']['PRUNED'] >= 2
    assert out[pruner]['cpu_s'] < 0.8 * out['none']['cpu_s'], (out[pruner]['cpu_s'], out['none']['cpu_s'])
    assert out[pruner]['best']['gmean_cer'] == pytest.approx(out['none']['best']['gmean_cer'])   # same sampler seed, same best

@pytest.fixture(scope='module')
def teacher_run(request):
    "A smoke run directory with the teacher cache: ASR_KD_TEACHER_RUN names a ready one, else the session's smoke study is used."
    ready = os.environ.get('ASR_KD_TEACHER_RUN')
    if ready and (Path(ready)/'cache').is_dir(): return Path(ready)
    return Path(request.getfixturevalue('smoke_run')['dir'])   # asked for only when needed: the smoke study takes minutes

P3_KEYS = {'device', 'workers', 'n_trials', 'seed', 'checkpoints', 'noise_ceiling', 'ceiling_source', 'pruners', 'winner', 'retrain_seeds'}
ROW_KEYS = {'pruner', 'cpu_s', 'wall_s', 'trial_s', 'pruned', 'finished', 'best_cer', 'best_hp', 'retrained_cer', 'retrained_seeds',
            'retrained_spread', 'cpu_share', 'within_ceiling'}

def test_compare_pruners_on_the_smoke_cache(teacher_run, tmp_path):
    from asr_kd_nb.bench_pruners import compare_pruners
    before = sorted(p.name for p in teacher_run.iterdir())
    r = compare_pruners(teacher_run, ('none', 'median'), n_trials=4, device='cpu', workers=2, checkpoints=2,
                        overrides={'kd': {'epochs': 0.25}, 'search': {'pruner_startup_trials': 1}}, out=tmp_path)
    assert P3_KEYS <= set(r) and [x['pruner'] for x in r['pruners']] == ['none', 'median']
    for x in r['pruners']:
        assert ROW_KEYS <= set(x) and x['finished'] == 4 and x['cpu_s'] > 0 and len(x['retrained_seeds']) == 2
        assert 0 <= x['retrained_cer'] <= 2 and 0 <= x['best_cer'] <= 2
    assert r['pruners'][0]['cpu_share'] == 1.0
    on_disk = json.loads((teacher_run/'bench'/'pruners.json').read_text())
    assert on_disk['pruners'][1]['cpu_s'] == r['pruners'][1]['cpu_s'] and (tmp_path/'pruners.csv').exists()
    assert len(pd.read_csv(teacher_run/'bench'/'pruners.csv')) == 2
    assert not (teacher_run/'search').exists() or 'search' in before     # the run's own studies are never touched

def test_gpu_pruners_script_on_cpu(teacher_run, tmp_path):
    pack, out = tmp_path/'pack', tmp_path/'out'
    p = subprocess.run(['bash', 'scripts/gpu-pruners.sh', '--pack', str(teacher_run), str(pack)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert 'MiB' in p.stderr and (pack/'cache').is_dir() and (pack/'splits.json').exists() and not (pack/'notebooks').exists()
    r = subprocess.run(['bash', 'scripts/gpu-pruners.sh', str(pack), '--device', 'cpu', '--n-trials', '2', '--workers', '2',
                        '--pruners', 'none hyperband', '--checkpoints', '2', '--out', str(out), '--set', 'kd.epochs=0.25'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, 'PYTHON': sys.executable})   # this interpreter, activated or not
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out/'pruners.json').read_text())
    assert [x['pruner'] for x in res['pruners']] == ['none', 'hyperband'] and res['device'] == 'cpu'
    assert 'winner (least CPU within the ceiling)' in r.stdout
