"Search strategies at equal compute: budgets, exact promotions, regret that detects a misleading fraction, the stage's outputs."
import json, math
from pathlib import Path
import numpy as np, pandas as pd, pytest, optuna
from scipy import stats
from asr_kd_nb.config import study_config, save_config
from asr_kd_nb.conformer import StudentHParams
from asr_kd_nb.search import SearchConfig, parse_space, suggest_hparams
from asr_kd_nb.strategies import (StrategiesConfig, synthetic_scorer, strategy_registry, run_strategies, successive_halving,
                                  promote, quiet_optuna, strategies_stage, budget_grid, retrain_returned, anytime_regret,
                                  regret_table, trace_from_trials, sampler_search)

SPACE = SearchConfig().space
SCORE = synthetic_scorer(SPACE)

def _configs(n, seed=0):
    st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [suggest_hparams(st.ask(), parse_space(SPACE)) for _ in range(n)]

@pytest.mark.parametrize('budget', [25.0, 70.0, 140.0])
def test_every_strategy_stops_within_budget(budget):
    sc = StrategiesConfig(fractions=[0.3, 0.5, 0.7], rungs=[0.3, 0.5, 1.0], bracket=6, eta=2)
    reg = {**strategy_registry(sc), 'successive-halving': strategy_registry(StrategiesConfig(rungs=[0.3, 0.5, 1.0], hyperband=False))['multifidelity']}
    traces = run_strategies(SCORE, SPACE, budget, reg, replicates=2, seed=3)
    for name, runs in traces.items():
        for tr in runs:
            costs = [t[2]['cpu_s'] for t in tr]
            np.testing.assert_allclose([t[0] for t in tr], np.cumsum(costs))           # the trace books every trial
            assert sum(costs[:-1]) < budget <= sum(costs), name                         # no trial starts after B ...
            assert sum(costs) - budget <= costs[-1], name                               # ... so it ends within B + one trial

def _finished(storage, seed, r):
    st = optuna.load_study(study_name=f'strategy-sh-s{seed}-rung-{r}', storage=storage)
    return [t for t in st.get_trials(deepcopy=False) if t.state.is_finished()]

@pytest.mark.parametrize('eta,bracket,hyperband', [(3, 9, False), (2, 8, False), (2, 8, True), (3, 7, True)])
def test_multifidelity_promotes_exactly_top_of_rung(tmp_path, eta, bracket, hyperband):
    storage = f'sqlite:///{tmp_path}/studies.db'                   # an RDB storage, as the search stage uses
    rungs = (0.3, 0.5, 1.0)
    with quiet_optuna(): successive_halving(SCORE, SPACE, 250.0, seed=9, rungs=rungs, eta=eta, bracket=bracket, hyperband=hyperband, storage=storage)
    last = max(t.user_attrs['bracket'] for r in range(3) for t in _finished(storage, 9, r))
    exact = 0
    for r in (1, 2):
        below, here = _finished(storage, 9, r - 1), _finished(storage, 9, r)
        for b in sorted({t.user_attrs['bracket'] for t in here} & {t.user_attrs['bracket'] for t in below}):
            n = [t for t in below if t.user_attrs['bracket'] == b]
            top = [t.params for t in sorted(n, key=lambda t: t.value)[:math.ceil(len(n) / eta)]]
            got = [t.params for t in here if t.user_attrs['bracket'] == b]
            if b < last:                                           # a complete bracket: exactly the top ⌈n/η⌉, nothing else
                assert sorted(map(str, got)) == sorted(map(str, top)), (r, b); exact += 1
            else: assert all(p in top for p in got)                # the bracket the budget cut off: only top ones
    assert exact >= 2
    for b in range(last):                                          # a bracket's first rung holds its full cohort
        r0 = (b % 3) if hyperband else 0
        assert len([t for t in _finished(storage, 9, r0) if t.user_attrs['bracket'] == b]) == math.ceil(bracket / eta**r0)

@pytest.mark.parametrize('n', range(1, 21))
def test_promote_counts(n):
    rng = np.random.default_rng(n)
    cers = {f'c{i}': float(v) for i, v in enumerate(rng.random(n))}
    for eta in (2, 3, 4):
        top = promote(cers, eta)
        assert len(top) == math.ceil(n / eta)
        assert max(cers[k] for k in top) <= min([cers[k] for k in cers if k not in top], default=math.inf)

def test_synthetic_ranking_moves_with_fraction():
    cs = _configs(40)
    at = lambda f: [SCORE(c, f, 0)['cer'] for c in cs]
    rho = {f: stats.spearmanr(at(f), at(1.0))[0] for f in (0.3, 0.5, 0.7)}
    assert rho[0.3] < rho[0.5] < rho[0.7] < 0.95, rho
    assert SCORE(cs[0], 0.5, 1)['cpu_s'] == pytest.approx(0.5 * SCORE(cs[0], 1.0, 1)['cpu_s'])

def _regret_at_b(scorer, names=('fraction-0.30', 'full')):
    sc = StrategiesConfig(fractions=[0.3], rungs=[0.3, 0.5, 1.0])
    reg = {n: f for n, f in strategy_registry(sc).items() if n in names}
    B = 150.0; grid = budget_grid(B, 4)
    traces = run_strategies(scorer, SPACE, B, reg, 3, seed=1)
    full = retrain_returned(scorer, traces, grid, [5, 6])
    t = regret_table(anytime_regret(traces, grid, full), B, 200)
    return t[t.budget == 'B'].set_index('strategy').regret

def test_regret_detects_a_misleading_fraction_and_not_a_faithful_one():
    misled = _regret_at_b(SCORE)
    assert misled['fraction-0.30'] > misled['full'] + 0.01, misled   # the 30 % optimum is elsewhere: it costs CER
    faithful = lambda hp, f, s: {**SCORE(hp, 1.0, s), 'cpu_s': SCORE(hp, f, s)['cpu_s']}   # ranking independent of f
    fair = _regret_at_b(faithful)
    assert fair['fraction-0.30'] < misled['fraction-0.30'] - 0.01, (fair, misled)
    assert fair['fraction-0.30'] <= fair['full'] + 0.01, fair        # same ranking, cheaper trials: no worse beyond noise

def test_bad_inputs():
    with pytest.raises(ValueError, match='cpu_s=-1'): sampler_search(lambda hp, f, s: {'cer': 0.1, 'cpu_s': -1.0}, SPACE, 5.0, 0)
    with pytest.raises(ValueError, match="lacks columns"): trace_from_trials(pd.DataFrame({'number': [0]}), 1.0, 1.0)
    with pytest.raises(ValueError, match='must be in \\(0, 1\\]'): StrategiesConfig(rungs=[0.0, 1.0])

def _run_dir(tmp_path, **over):
    save_config(study_config('smoke', {'strategies': {'budget_trials': 5, 'replicates': 3, 'bracket': 6, 'pareto_trials': 2, 'workers': 1,
                                                      'latency_seconds': 0.5, 'bootstrap': 200, 'objective': 'synthetic',
                                                      'fractions': [0.3, 0.5, 0.7], 'rungs': [0.3, 0.5, 1.0], **over}}), tmp_path)
    return tmp_path

def test_stage_summary_and_figures(tmp_path):
    run_dir = _run_dir(tmp_path)
    strategies_stage(run_dir)
    s = json.loads((run_dir/'strategies'/'summary.json').read_text())
    assert set(s['strategies']) == {'fraction-0.30', 'fraction-0.50', 'fraction-0.70', 'full', 'multifidelity', 'random'}
    for name, v in s['strategies'].items():
        assert v['regret_ci'][0] <= v['regret'] <= v['regret_ci'][1] and v['regret'] >= 0, name
        assert s['budget_cpu_s'] <= v['cpu_s'], name
        StudentHParams.from_dict(v['config'])                     # a returned configuration is a valid student
        assert len(v['configs']) == 3
    assert min(v['regret'] for v in s['strategies'].values()) >= 0 and s['best_full_cer'] > 0
    assert s['objective'] == 'synthetic' and s['verdict'].startswith('At B/4')
    for f in ('anytime_regret.png', 'pareto.png'): assert (run_dir/'strategies'/f).stat().st_size > 5000
    small, front = s['pareto']['smallest_within'], s['pareto']['front']
    assert small['cer'] <= 1.1 * min(r['cer'] for r in front) + 1e-12
    assert small['n_params'] == min(r['n_params'] for r in front if r['cer'] <= 1.1 * min(q['cer'] for q in front) + 1e-12)
    again = strategies_stage(_run_dir(tmp_path/'again'))            # seeds decide everything but the measured latency
    assert {k: v['regret'] for k, v in again['strategies'].items()} == {k: v['regret'] for k, v in s['strategies'].items()}

def test_parallel_runs_equal_inline_runs(tmp_path):
    from asr_kd_nb.strategies import run_strategy_jobs
    run_dir = _run_dir(tmp_path, fractions=[0.3])
    names = ['fraction-0.30', 'multifidelity', 'random']
    assert run_strategy_jobs(run_dir, names, 40.0, 2, workers=2) == run_strategy_jobs(run_dir, names, 40.0, 2, workers=1)

def test_stage_refuses_unknown_objective(tmp_path):
    with pytest.raises(ValueError, match="strategies.objective='bogus' is not a registered scorer"):
        strategies_stage(_run_dir(tmp_path, objective='bogus'))

def test_stage_runs_under_papermill(tmp_path):
    from asr_kd_nb.pipeline import Stage, execute_stage
    run_dir = _run_dir(tmp_path, fractions=[0.3], replicates=2)
    out = execute_stage(Stage('10_strategies', 'strategies', ('strategies/summary.json',)), run_dir, progress=False)
    assert (run_dir/'strategies'/'summary.json').exists() and out.exists()
    assert 'smallest_within' in json.loads((run_dir/'strategies'/'summary.json').read_text())['pareto']

def test_run_dir_made_before_the_strategies_section_accepts_it(tmp_path):
    "A finished run whose config.json predates this stage: `--force 10_strategies` adds the section; changing it later names the stage."
    from asr_kd_nb.pipeline import prepare_run_dir, available_stages, ConfigMismatch
    available_stages()                                            # every stage's section registered, as `asr-kd run` does
    cfg = study_config('default')
    old = cfg.to_dict(); old.pop('strategies')
    (tmp_path/'config.json').write_text(json.dumps(old))
    prepare_run_dir(cfg, tmp_path, force='10_strategies')        # a section gained is no change: accepted, written
    saved = json.loads((tmp_path/'config.json').read_text())
    assert saved['strategies']['objective'] == 'kd' and {k: v for k, v in saved.items() if k != 'strategies'} == old
    prepare_run_dir(cfg, tmp_path)                                # the same config again: nothing to force
    with pytest.raises(ConfigMismatch, match='--force 10_strategies'):
        prepare_run_dir(study_config('default', {'strategies': {'budget_trials': 2.0}}), tmp_path)
