"""The data-size analysis: panel agreement, regret, the stage on real (toy) KD studies, synthetic objectives that do and do not
change the ranking with the fraction, the conclusion's refusals, and the HTML report in Chromium."""
import base64, json, math, os, re, shutil, subprocess
from pathlib import Path
import numpy as np, pandas as pd, pytest
import nbformat, optuna
from asr_kd_nb.config import study_config, save_config, write_json, read_json, load_config
from asr_kd_nb.datasize import panel_agreement, regret_stats, datasize_stage, train_and_score
from asr_kd_nb.report import headline, render_html_report, conclusion_text
from asr_kd_nb.rundir import fraction_ids, read_trials, study_dir
from asr_kd_nb.search import search_worker, search_stage, HPARAMS

optuna.logging.set_verbosity(optuna.logging.WARNING)
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def test_panel_agreement_known_rankings():
    rng = np.random.default_rng(0)
    x = np.linspace(0.2, 0.6, 8)[:, None] + rng.normal(0, 0.002, (8, 2))
    same = panel_agreement(x, 2 * x + 0.1, n_boot=300, seed=1)
    assert same['spearman'] > 0.95 and same['top_k_recall'] == 1
    rev = panel_agreement(x, -x, n_boot=300, seed=1)
    assert rev['spearman'] < -0.95 and rev['spearman_ci'][1] < -0.9 and rev['top_k_recall'] == 0
    noisy = panel_agreement(x, x + rng.normal(0, 0.1, x.shape), n_boot=300, seed=1)
    for r in (same, rev, noisy):
        for m in ('spearman', 'kendall'): assert r[f'{m}_ci'][0] <= r[m] <= r[f'{m}_ci'][1]
    assert noisy['spearman_ci'][1] - noisy['spearman_ci'][0] > 0.05           # noise gives a real interval
    x[2, 0] = np.nan
    assert panel_agreement(x, x)['n'] == 7


def test_regret_interval_brackets_and_detects():
    ref = {1: 0.30, 2: 0.32, 3: 0.31}
    assert regret_stats({0: ref, 1: ref}, ref)['regret_ci'] == [0.0, 0.0]
    worse = regret_stats({0: {s: v + 0.04 for s, v in ref.items()}, 1: {s: v + 0.05 for s, v in ref.items()}}, ref, 500, 0)
    assert 0.04 - 1e-9 <= worse['regret_ci'][0] <= worse['regret'] <= worse['regret_ci'][1] <= 0.05 + 1e-9
    better = regret_stats({0: {s: v - 0.04 for s, v in ref.items()}}, ref, 500, 0)
    assert better['regret_ci'][1] < 0


def test_conclusion_refuses_when_students_did_not_learn():
    s = {'noise_ceiling': {'regret': 0.0, 'regret_ci': [0.0, 0.0], 'spearman_rho': 0.9, 'spearman_ci': [0.8, 1.0]},
         'per_fraction': {'1.0': {'best_cer': 0.947}, '0.5': {'regret': 0.2, 'regret_ci': [0.1, 0.3], 'cost_ratio': 0.5}}}
    t = conclusion_text(s)
    assert t.startswith('The students did not learn') and 'worse' not in t and 'as good' not in t
    s['per_fraction']['1.0']['best_cer'] = 0.2
    assert 'no: 50 % picked measurably worse' in conclusion_text(s)


def _synthetic_run(tmp_path, objective, fractions=(1.0, 0.3)):
    run = tmp_path/objective.split(':')[1]
    save_config(study_config('smoke', {'search': {'objective': objective, 'pruner': 'none', 'n_trials': 8, 'replicates': 2},
                                       'kd': {'seeds': [1]},
                                       'datasize': {'long_epochs': 0, 'workers': 2, 'bootstrap': 300, 'panel_size': 8}}), run)
    ids = [f'u{i:02d}' for i in range(20)]
    write_json(run/'splits.json', {'train': ids, 'fractions': {'0': {'1.0': ids, '0.3': ids[:6]}}, 'subset_seeds': [0], 'test_folds': {'c': ['x']}})
    os.environ['ASR_KD_DRY_RUN_SECONDS'] = '0'
    for f in fractions: search_stage(run, f, workers=2, objective=objective)
    return run, datasize_stage(run)


def test_synthetic_objective_whose_ranking_changes_is_detected(tmp_path):
    "The best learning rate moves with the fraction: the 30 % searches pick configurations that are worse on 100 %."
    run, s = _synthetic_run(tmp_path, 'asr_kd_nb.search:shifting_scorer')
    p = s['per_fraction']['0.3']
    assert p['regret'] > 0 and p['regret_ci'][0] > 0 and p['regret_ci'][0] > s['noise_ceiling']['regret_ci'][1], p
    assert p['spearman_rho'] < 0.9 and p['spearman_ci'][0] <= p['spearman_rho'] <= p['spearman_ci'][1], p
    assert 'no: 30 % picked measurably worse' in s['conclusion']
    jobs = [json.loads(l) for l in (run/'report'/'scores.jsonl').read_text().splitlines()]
    assert {j['job']['fraction'] for j in jobs} == {'1.0', '0.3'}
    for j in jobs: assert j['result']['train_ids'] == len(fraction_ids(run, j['job']['fraction']))   # trains on the fraction it names


def test_synthetic_objective_that_ignores_the_data_agrees(tmp_path):
    run, s = _synthetic_run(tmp_path, 'asr_kd_nb.search:dry_run_scorer')
    assert math.isclose(s['per_fraction']['0.3']['spearman_rho'], 1.0) and s['per_fraction']['0.3']['top_k_recall'] == 1


def _toy_cache(run_dir: Path, n_main=28, n_ood=8, seed=0):
    "A small emission cache in the teacher stage's on-disk format (random linear 'teacher' over random MFCCs)."
    rng = np.random.default_rng(seed)
    vocab = ['<pad>', ' ', 'а', 'б', 'в']
    W = rng.normal(0, 2, (13, len(vocab))).astype(np.float32); W[:, 0] += 1
    ids = [f'm{i:02d}' for i in range(n_main)] + [f'o{i:02d}' for i in range(n_ood)]
    frames = [int(rng.integers(12, 30)) for _ in ids]
    mf = rng.normal(0, 1, (sum(frames), 13)).astype(np.float32)
    z = mf @ W; lp = (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(np.float16)
    d = run_dir/'cache'; d.mkdir(parents=True)
    np.save(d/'mfcc.npy', mf); np.save(d/'logprobs.npy', lp)
    offsets = np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(int).tolist()
    write_json(d/'index.json', {'key': {'toy': True}, 'teacher': {'architecture': 'toy'}, 'ids': ids, 'vocab': vocab, 'blank_id': 0,
                                'texts': ['аб ва'] * len(ids), 'frames': frames, 'offsets': offsets, 'n_main': n_main, 'n_ood': n_ood})
    main = ids[:n_main]
    write_json(run_dir/'splits.json', {'train': main[:16], 'fractions': {'0': {'1.0': main[:16], '0.5': main[:8], '0.3': main[:5]}}, 'subset_seeds': [0],
                                       'test_folds': {'cluster-0': main[16:20], 'cluster-1': main[20:24]}, 'dev_folds': {'cluster-2': main[24:]},
                                       'seed': 0})


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    "Two replicate KD searches (the real objective, tiny students) on 100 % and 50 % of a toy cache, and the stage done."
    run = tmp_path_factory.mktemp('datasize-run')
    cfg = study_config('smoke', {'search': {'pruner': 'none', 'n_trials': 5, 'replicates': 2, 'workers': 2},
                                 'datasize': {'panel_size': 2, 'long_epochs': 1, 'curve_points': 2, 'workers': 2, 'bootstrap': 200}})
    save_config(cfg, run)
    _toy_cache(run)
    write_json(run/'splits.json', {**read_json(run/'splits.json'), 'fractions': {'0': {'1.0': read_json(run/'splits.json')['train'],
                                                                                    '0.5': read_json(run/'splits.json')['train'][:8]}}})
    for f in (1.0, 0.5): search_stage(run, f)
    return {'run': run, 'summary': datasize_stage(run)}


def test_kd_scorer_trains_each_fraction_on_its_ids_for_the_epoch_budget(tmp_path, monkeypatch):
    import asr_kd_nb.kd as kd
    from asr_kd_nb.search import kd_scorer
    from asr_kd_nb.conformer import PAPER_BEST, scale_hparams, ConformerConfig
    from dataclasses import asdict
    run = tmp_path/'run'; run.mkdir()
    save_config(study_config('smoke', {'kd': {'epochs': 2.0, 'seeds': [1, 2]}}), run)
    _toy_cache(run)
    calls, real = [], kd.train_student
    def spy(hp, cache, train_ids, kd_cfg, seed, steps=None, **kw):
        r = real(hp, cache, train_ids, kd_cfg, seed, steps, **kw)
        calls.append((list(train_ids), steps, r.steps, r.utterances)); return r
    monkeypatch.setattr(kd, 'train_student', spy)
    cfg = load_config(run)
    hp = asdict(scale_hparams(PAPER_BEST['1.0'], cfg.conformer))
    for f in (1.0, 0.5, 0.3):
        calls.clear()
        out = kd_scorer(run, f, cfg)(hp, lambda *report: None)
        ids = fraction_ids(run, f)
        assert len(calls) == 2 and all(c[0] == ids for c in calls)                       # exactly this fraction's ids
        want = kd.budget_steps(cfg.kd, len(ids), hp['minibatch_size'])
        assert all(c[1] == c[2] == want for c in calls) and all(c[3] == 2 * len(ids) for c in calls)   # 2 epochs
        assert out['steps'] == 2 * want and out['train_ids'] == len(ids)


def test_stage_summary_on_real_kd_studies(toy_run):
    run, s = toy_run['run'], toy_run['summary']
    on_disk = read_json(run/'report'/'summary.json')
    assert on_disk['fractions'] == ['1.0', '0.5']
    for f in on_disk['fractions']:
        p = on_disk['per_fraction'][f]
        for k in ('cost_ratio', 'replicates', 'regret', 'regret_ci', 'noise_ceiling', 'spearman_rho', 'spearman_ci'): assert k in p, (f, k)
        assert p['replicates'] == 2 and p['trials'] == 10
        lo, hi = p['regret_ci']; assert lo <= p['regret'] <= hi
        for r in range(2):
            df = read_trials(run, f, r)
            assert {'steps', 'cpu_s', 'utterances'} <= set(df.columns) and (df.cpu_s > 0).all()
    # budgets follow the data: the paper configurations (same batch sizes) train half the steps on half the ids
    a, b = (read_trials(run, f, 0).set_index('enqueued').steps for f in (1.0, 0.5))
    ratio = (b['paper-best-1.0'] / a['paper-best-1.0'])
    assert 0.35 <= ratio <= 0.65, ratio
    assert on_disk['per_fraction']['0.5']['cost_ratio'] > 0   # (16 vs 8 toy ids: fixed costs dominate; the smoke run checks the saving)
    assert on_disk['per_fraction']['1.0']['cost_ratio'] == 1
    for name in ('ood_curves.png', 'panel.png', 'regret_cost.png'):
        assert (run/'report'/name).read_bytes()[:8] == PNG_MAGIC, name
    curves = pd.read_csv(run/'report'/'ood_curves.csv')
    assert set(curves.fraction.map(lambda v: f'{float(v):.1f}')) == {'1.0', '0.5'} and curves.cer.between(0, 5).all()
    assert on_disk['conclusion'] == (run/'report'/'conclusion.md').read_text().strip()
    assert set(on_disk['interval_widths']) == {'1.0', '0.5'}


def test_rerun_trains_nothing(toy_run):
    run, s = toy_run['run'], toy_run['summary']
    again = datasize_stage(run)
    assert again['trainings']['from_earlier_runs'] == again['trainings']['planned']
    assert again['per_fraction'] == s['per_fraction']


def test_headline(toy_run):
    run, s = toy_run['run'], toy_run['summary']
    text = headline(run)
    assert str((run/'report').resolve()) in text.splitlines()[0] and 'noise ceiling' in text
    rows = [l for l in text.splitlines() if re.match(r'\s*\d+ %', l)]
    assert [r.split()[0] for r in rows] == ['100', '50']


def _png(seed=0) -> bytes:
    import io, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 1.5)); ax.plot(np.random.default_rng(seed).normal(size=10))
    buf = io.BytesIO(); fig.savefig(buf, format='png'); plt.close(fig)
    return buf.getvalue()


_CHECK = ("<script>window.addEventListener('load', () => { const im = [...document.images];"
          " document.body.setAttribute('data-images', im.length + '/' + im.filter(i => i.complete && i.naturalWidth > 0).length); });"
          "</script>")


def _loaded_images(page: Path) -> tuple[int, int]:
    "(images, images that decoded) of `page` in headless Chromium, counted by a script injected into a copy."
    probe = page.with_name(f'_probe_{page.name}')
    probe.write_text(page.read_text(encoding='utf-8').replace('</body>', _CHECK + '</body>'), encoding='utf-8')
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--virtual-time-budget=5000', '--dump-dom',
                        probe.as_uri()], capture_output=True, text=True, timeout=120)
    probe.unlink()
    m = re.search(r'data-images="(\d+)/(\d+)"', r.stdout)
    assert m, f'no image count in the DOM of {page.name}: {r.stdout[-300:]} {r.stderr[-500:]}'
    return int(m[1]), int(m[2])


@pytest.mark.skipif(CHROMIUM is None, reason='Debian chromium is not installed')
def test_html_report_figures_load_in_chromium(toy_run):
    run = toy_run['run']
    nbdir = run/'notebooks'; nbdir.mkdir(exist_ok=True)
    (nbdir/'figure.png').write_bytes(_png(1))
    for i, name in enumerate(('00_corpus', '06_search-frac-0.30', '06_search-frac-1.00', '07_datasize')):
        code = nbformat.v4.new_code_cell('plot()', outputs=[nbformat.v4.new_output(
            'display_data', data={'image/png': base64.b64encode(_png(i)).decode(), 'text/plain': '<Figure>'})])
        cells = [nbformat.v4.new_markdown_cell(f'# Chapter {name}\n\n![a figure](figure.png)'),
                 nbformat.v4.new_code_cell('#| hide\nhidden_cell = 1'), code]
        nbformat.write(nbformat.v4.new_notebook(cells=cells), nbdir/f'{name}.ipynb')
    index = render_html_report(run)
    assert index == run/'report'/'html'/'index.html'
    links = re.findall(r'href="([^"]+)\.html"', index.read_text())
    assert links == ['00_corpus', '06_search-frac-1.00', '06_search-frac-0.30', '07_datasize']
    for page in [index] + [index.parent/f'{l}.html' for l in links]:
        text = page.read_text(encoding='utf-8')
        uris = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', text)
        assert uris, f'no embedded figure in {page.name}'
        assert all(base64.b64decode(u)[:8] == PNG_MAGIC for u in uris)
        assert 'hidden_cell' not in text
        assert not re.search(r'<script[^>]*src="https?://', text), f'{page.name} loads a script from the network'
        total, ok = _loaded_images(page)
        assert total >= len(uris) and ok == total, (page.name, total, ok)
    # a broken figure is detected by the same check
    bad = index.parent/'broken.html'
    bad.write_text('<html><body><img src="data:image/png;base64,AAAA"></body></html>')
    assert _loaded_images(bad) == (1, 0)
