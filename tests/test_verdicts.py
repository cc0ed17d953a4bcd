"""The data-size verdicts: their error rates measured by simulation against the targets, a verdict on synthetic tables whose
answer is known both ways, and `asr-kd power` on a design before the run."""
import json, math
import pytest
from conftest import asr_kd
from asr_kd_nb.verdicts import (CALIBRATION_TARGETS, TableModel, VerdictsConfig, analyse_table, calibrate, prior_model,
                                synthetic_table, true_difference, verdict_text)

def _mc(p:float, k:int) -> float:
    "Three Monte-Carlo standard errors of a rate p estimated from k simulated studies."
    return 3 * math.sqrt(p * (1 - p) / k)

@pytest.fixture(scope='module')
def full_design_calibration():
    "200 simulated studies per truth at the `full` design's size (96 configurations, 2 seeds, n = 8), prior noise levels."
    vc = VerdictsConfig(primary_n=8, n_values=[8], resamples=300)
    return calibrate(prior_model(vc), {'configs': 96, 'seeds': 2, 'primary_n': 8}, vc, seed=19, simulations=200, detect=False)

def test_calibration_meets_coverage_and_false_verdict_targets(full_design_calibration):
    "Coverage >= 92 %, false 'worse' <= 5 %, false 'within' <= 5 %, each within three Monte-Carlo errors (fixed seed)."
    c, t = full_design_calibration, CALIBRATION_TARGETS
    studies = sum(r['studies'] for r in c['by_truth'].values())
    assert studies == 600 and c['simulations'] == 200
    assert c['coverage'] >= t['coverage'] - _mc(t['coverage'], studies), c
    assert c['false_worse'] <= t['false_worse'] + _mc(t['false_worse'], 200), c
    assert c['false_within'] <= t['false_within'] + _mc(t['false_within'], 200), c
    assert c['power'] > c['false_worse'] and c['by_truth']['2δ']['truth'] == pytest.approx(2 * c['margin'])

def test_calibration_catches_intervals_that_are_too_short():
    "The same simulation fails the coverage target for 60 % intervals: the check above can fail."
    vc = VerdictsConfig(primary_n=8, n_values=[8], resamples=200, alpha=0.4)
    c = calibrate(prior_model(vc), {'configs': 48, 'seeds': 2, 'primary_n': 8}, vc, seed=19, simulations=60, detect=False)
    assert c['coverage'] < CALIBRATION_TARGETS['coverage'] - _mc(CALIBRATION_TARGETS['coverage'], 180), c
    assert c['false_within'] > CALIBRATION_TARGETS['false_within'], c

@pytest.mark.parametrize('seed', [7, 8])
def test_verdict_known_both_ways(seed):
    "'within' for every fraction when fractions do not matter; 'worse' for 30 % when its ranking is nearly random."
    model, vc = TableModel(math.log(0.3), 0.3, 0.04, 0.03), VerdictsConfig(primary_n=8, n_values=[8, 16], resamples=400)
    design = dict(configs=40, seeds=[1, 2, 3], fractions=[1.0, 0.7, 0.3], budgets=[0.5, 1.0, 2.0])
    same = analyse_table(synthetic_table(model, **design, seed=seed), vc, seed=seed, calibration=False)
    worse = analyse_table(synthetic_table(model, **design, distortion={0.3: 3.0}, seed=seed), vc, seed=seed, calibration=False)
    assert true_difference(model, 3.0, 8) > 4 * worse['margin']
    assert {k: v['verdict'] for k, v in same['per_fraction'].items()} == {'0.7': 'within', '0.3': 'within'}
    assert {k: v['verdict'] for k, v in worse['per_fraction'].items()} == {'0.7': 'within', '0.3': 'worse'}
    assert worse['per_fraction']['0.3']['diff_ci'][0] > worse['margin'] > same['per_fraction']['0.3']['diff_ci'][1]
    assert '30 % of the data: worse than a 100 % search by more than δ' in verdict_text(worse)
    json.dumps(worse)   # the summary is what report/summary.json holds

def test_power_command_prints_error_rates(tmp_path):
    "`asr-kd power` prints coverage, false 'worse', false 'within' and power from 200 simulated studies per truth."
    cfg = tmp_path/'design.json'
    cfg.write_text(json.dumps({'datasize': {'panel_size': 12}, 'verdicts': {'resamples': 100}}))
    r = asr_kd('power', '--preset', 'smoke', '--config', cfg, '--simulations', 200, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert 'M = 12 configurations' in out and '200 simulated studies per truth' in out
    for line in ('coverage of the 95 % intervals:', 'false "worse" (no difference):', 'false "within" (truth δ worse):',
                 'power ("worse" at truth 2δ):', 'smallest difference detected with 80 % power:'):
        assert line in out, out

def test_power_command_refuses_a_panel_too_small(tmp_path):
    "A panel that cannot hold the primary search, or a bad key, exits 2 naming the key; no traceback."
    cfg = tmp_path/'design.json'
    cfg.write_text(json.dumps({'datasize': {'panel_size': 4}, 'verdicts': {'primary_n': 8, 'n_values': [8]}}))
    r = asr_kd('power', '--config', cfg, '--preset', 'smoke', timeout=300)
    assert r.returncode == 2 and 'verdicts.primary_n=8: at most datasize.panel_size - 1 = 3' in r.stderr and 'Traceback' not in r.stderr
    cfg.write_text(json.dumps({'verdicts': {'margn': 0.1}}))
    r = asr_kd('power', '--config', cfg, '--preset', 'smoke', timeout=300)
    assert r.returncode == 2 and "unknown key(s) ['margn']" in r.stderr and 'Traceback' not in r.stderr
