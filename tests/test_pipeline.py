"The `asr-kd` command: the smoke study end to end, resuming, and its usage errors."
import json
from pathlib import Path
import pytest
from conftest import asr_kd

def test_smoke_study_writes_every_stage_and_skips_on_rerun(smoke_run):
    d = smoke_run['dir']
    for f in ['config.json', 'corpus/manifest.jsonl', 'corpus/report.json', 'notebooks/00_corpus.ipynb', 'timings.json', 'stages.json']:
        assert (d/f).exists(), f
    cfg = json.loads((d/'config.json').read_text())
    assert cfg['preset'] == 'smoke' and cfg['corpus']['source'] == 'embedded'
    t = json.loads((d/'timings.json').read_text())
    assert t['stages']['00_corpus'] > 0 and t['total_s'] >= t['stages']['00_corpus']
    done = json.loads((d/'stages.json').read_text())
    assert set(done) == set(t['stages'])
    # the second identical run executed nothing: every stage reported as skipped, notebooks untouched
    assert 'running' not in smoke_run['second'].stderr
    assert smoke_run['second'].stderr.count('skipped') == len(done)
    print(f'smoke study wall time: {smoke_run["wall_s"]:.0f} s; per stage: {t["stages"]}')

def test_usage_errors_exit_2_and_change_nothing(tmp_path, smoke_run):
    r = asr_kd('run', '--preset', 'huge', '--run-dir', tmp_path/'a')
    assert r.returncode == 2 and 'invalid choice' in r.stderr and not (tmp_path/'a').exists()
    bad = tmp_path/'bad.json'; bad.write_text('{"corpus": ')
    r = asr_kd('run', '--preset', 'smoke', '--run-dir', tmp_path/'b', '--config', bad)
    assert r.returncode == 2 and 'not valid JSON' in r.stderr and not (tmp_path/'b').exists()
    r = asr_kd('run', '--preset', 'smoke', '--run-dir', tmp_path/'c', '--config', tmp_path/'missing.json')
    assert r.returncode == 2 and 'does not exist' in r.stderr
    unknown = tmp_path/'unknown.json'; unknown.write_text('{"corpus": {"n_utts": 3}}')
    r = asr_kd('run', '--preset', 'smoke', '--run-dir', tmp_path/'d', '--config', unknown)
    assert r.returncode == 2 and "unknown key(s) ['n_utts']" in r.stderr
    # a run dir made with another config is refused without --force, and its config is left as it was
    d = smoke_run['dir']; before = (d/'config.json').read_text()
    r = asr_kd('run', '--preset', 'default', '--run-dir', d)
    assert r.returncode == 2 and 'different config' in r.stderr
    assert (d/'config.json').read_text() == before

def test_help_explains_every_option():
    r = asr_kd('run', '--help')
    assert r.returncode == 0
    for opt in ['--preset', '--run-dir', '--config', '--stages', '--force', 'smoke', 'default', 'paper']: assert opt in r.stdout

def test_failed_stage_stops_with_notebook_path_and_resumes(tmp_path):
    cfg = tmp_path/'c.json'
    cfg.write_text(json.dumps({'corpus': {'source': 'nemo', 'nemo_manifest': str(tmp_path/'m.jsonl')}}))
    (tmp_path/'m.jsonl').write_text(json.dumps({'audio_filepath': 'a.wav', 'text': 'да', 'duration': 1.0}) + '\n')  # a.wav missing
    run = tmp_path/'run'
    r = asr_kd('run', '--preset', 'smoke', '--run-dir', run, '--config', cfg, '--stages', '00_corpus', '--no-progress')
    assert r.returncode == 1 and 'no utterance of 1 candidates was accepted' in r.stderr
    assert str(run/'notebooks'/'00_corpus.ipynb') in r.stderr and (run/'notebooks'/'00_corpus.ipynb').exists()
    assert 'rerun the same command' in r.stderr and '--force 00_corpus' in r.stderr   # which one depends on the fix
    # make the missing input, rerun the same command: it resumes and finishes
    import soundfile as sf, numpy as np
    sf.write(tmp_path/'a.wav', (np.sin(np.arange(16000) / 5) * .3).astype('float32'), 16000)
    r = asr_kd('run', '--preset', 'smoke', '--run-dir', run, '--config', cfg, '--stages', '00_corpus', '--no-progress')
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((run/'corpus'/'manifest.jsonl').read_text().splitlines()) == 1

def test_paper_preset_offline_stops_fast_with_instructions(tmp_path):
    r = asr_kd('run', '--preset', 'paper', '--run-dir', tmp_path/'p', '--stages', '00_corpus', '--no-progress',
               env={'HF_HUB_OFFLINE': '1'}, timeout=300)
    assert r.returncode == 2 and not (tmp_path/'p').exists()    # refused before any stage, every missing source at once
    assert 'bond005/sberdevices_golos_10h_crowd' in r.stderr and 'corpus.hf_dataset' in r.stderr and '--config' in r.stderr
    for key in ('corpus.ood_dataset', 'clustering.xvector_model', 'teacher.source'): assert key in r.stderr
    assert '--repo-type dataset' in r.stderr

def test_smoke_searches_follow_the_data_and_sample_their_paths(smoke_run):
    "The smoke run's replicate searches: CPU cost per trial, steps that follow the fraction, test CER beside the dev objective, own sampler paths."
    import pandas as pd
    from asr_kd_nb.rundir import read_trials, finished_studies
    d = smoke_run['dir']
    studies = finished_studies(d)
    assert studies == {'1.0': [0, 1], '0.5': [0, 1]}
    trials = {(f, r): read_trials(d, f, r) for f, rs in studies.items() for r in rs}
    for t in trials.values(): assert {'steps', 'cpu_s', 'test_cer', 'subset_seed'} <= set(t.columns) and t.cpu_s.notna().all()
    assert {int(t.subset_seed.dropna().iloc[0]) for (f, r), t in trials.items() if f == '0.5'} == {0, 1}   # each replicate its own subsets
    # budgets follow the data: median steps of complete trials at 50 % are about half those at 100 % for the same batch sizes
    done = {f: pd.concat([t for (g, _), t in trials.items() if g == f]).query("state == 'COMPLETE'") for f in ('1.0', '0.5')}
    both = set(done['1.0'].minibatch_size) & set(done['0.5'].minibatch_size)
    ratios = [done['0.5'][done['0.5'].minibatch_size == b].steps.median() / done['1.0'][done['1.0'].minibatch_size == b].steps.median()
              for b in both]
    assert ratios and all(0.35 <= r <= 0.65 for r in ratios), ratios
    # the first trial after the enqueued ones differs between studies (independent sampler paths)
    first = {k: tuple(t[t.enqueued == ''].iloc[0][['learning_rate', 'dropout']]) for k, t in trials.items() if (t.enqueued == '').any()}
    assert len(set(first.values())) == len(first) >= 2, first

def test_smoke_strategies_summary(smoke_run):
    "Issue 15 on the smoke run: every strategy with CPU time, regret [interval] and its configuration, on the KD objective."
    from asr_kd_nb.conformer import StudentHParams
    d = smoke_run['dir']
    s = json.loads((d/'strategies'/'summary.json').read_text())
    assert s['objective'] == 'kd' and s['budget_cpu_s'] > 0 and s['probe'].startswith('median complete trial')
    assert {'fraction-0.50', 'full', 'multifidelity', 'random'} == set(s['strategies'])
    assert set(s['reused']) == {'fraction-0.50', 'full'}                 # the search stage's studies, not TPE run again
    for name, v in s['strategies'].items():
        for k in ('cpu_s', 'regret', 'regret_ci', 'config'): assert k in v, (name, k)
        StudentHParams.from_dict(v['config'])
        assert v['regret_ci'][0] <= v['regret'] <= v['regret_ci'][1], name
        assert v['replicates'] >= 2, name
    assert {'from_datasize', 'trainings'} <= set(s['retraining']), s['retraining']   # the retraining says what it reused and what it trained
    for f in ('anytime_regret.png', 'pareto.png'): assert (d/'strategies'/f).stat().st_size > 5000
