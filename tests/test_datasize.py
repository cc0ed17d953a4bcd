"The data-size analysis: rank statistics, regret, the stage's summary from real (toy) Optuna studies, the HTML report in Chromium."
import base64, json, math, os, re, shutil, subprocess
from pathlib import Path
import numpy as np, pandas as pd, pytest
import nbformat, optuna
from asr_kd_nb.config import study_config, save_config, write_json, read_json
from asr_kd_nb.datasize import (rank_agreement, regret, datasize_stage, headline, render_html_report, config_key, load_trials,
                                common_configs)
from asr_kd_nb.search import search_worker, study_name, HPARAMS

optuna.logging.set_verbosity(optuna.logging.WARNING)
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def test_rank_agreement_known_rankings():
    x = np.array([0.21, 0.25, 0.3, 0.33, 0.4, 0.52, 0.6])
    same = rank_agreement(x, 2 * x + 0.1, n_boot=300, seed=1)
    assert math.isclose(same['spearman'], 1) and math.isclose(same['kendall'], 1)
    assert math.isclose(same['spearman_low'], 1) and math.isclose(same['spearman_high'], 1) and same['top_k_overlap'] == 1
    rev = rank_agreement(x, -x, n_boot=300, seed=1)
    assert math.isclose(rev['spearman'], -1) and math.isclose(rev['kendall'], -1) and math.isclose(rev['spearman_high'], -1)
    assert rev['top_k_overlap'] == 0
    noisy = rank_agreement(x, x + np.random.default_rng(0).normal(0, 0.1, len(x)), n_boot=300, seed=1)
    assert -1 <= noisy['spearman_low'] <= noisy['spearman'] <= noisy['spearman_high'] <= 1
    assert noisy['spearman_high'] - noisy['spearman_low'] > 0.05           # noise gives a real interval
    assert rank_agreement([0.1, 0.2, np.nan, 0.4], [0.3, 0.1, 0.2, 0.5])['n'] == 3


def test_regret_paired_interval():
    ref = {f'seed-{s}/cluster-{k}': 0.3 + 0.02 * k + 0.01 * s for s in (0, 1) for k in range(4)}
    assert regret(ref, ref)['regret'] == 0
    worse = regret({c: v + 0.04 for c, v in ref.items()}, ref, n_boot=500, seed=0)
    assert 0.03 < worse['low'] <= worse['regret'] <= worse['high'] < 0.05 and worse['cells'] == 8
    better = regret({c: v - 0.04 for c, v in ref.items()}, ref, n_boot=500, seed=0)
    assert better['high'] < 0
    assert math.isclose(regret({}, ref, gmean=0.4, ref_gmean=0.3)['regret'], 0.1) and math.isnan(regret({}, ref, 0.4, 0.3)['low'])


def _toy_cache(run_dir: Path, n_main=24, n_ood=8, seed=0):
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
    write_json(run_dir/'splits.json', {'train': main[:16], 'fractions': {'1.0': main[:16], '0.5': main[:8], '0.3': main[:5]},
                                       'test_folds': {'cluster-0': main[16:20], 'cluster-1': main[20:]}, 'seed': 0})


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    "A run directory with three real Optuna studies (dry-run objective), a toy cache, and the datasize stage done."
    os.environ['ASR_KD_DRY_RUN_SECONDS'] = '0'
    run = tmp_path_factory.mktemp('datasize-run')
    cfg = study_config('smoke', {'search': {'objective': 'asr_kd_nb.search:dry_run_scorer', 'pruner': 'none', 'n_trials': 8},
                                 'datasize': {'common_trials': 3, 'max_rescore': 6, 'long_steps': 6, 'eval_every': 3,
                                              'workers': 2, 'bootstrap': 200}})
    save_config(cfg, run)
    _toy_cache(run)
    for f in (1.0, 0.5, 0.3): search_worker(run, f)
    summary = datasize_stage(run, progress=False)
    return run, summary


def test_summary_fields_and_files(toy_run):
    run, s = toy_run
    on_disk = read_json(run/'report'/'summary.json')
    assert on_disk['fractions'] == ['1.0', '0.5', '0.3'] == s['fractions']
    for f in on_disk['fractions']:
        p = on_disk['per_fraction'][f]
        for k in ('best_hparams', 'best_cer', 'spearman_rho', 'spearman_ci', 'regret', 'regret_ci', 'trials', 'cpu_hours'):
            assert k in p and p[k] is not None, (f, k)
        assert set(p['best_hparams']) == set(HPARAMS) and p['trials'] == 8
        best = read_json(run/'search'/study_name(float(f))/'best.json')['best']
        assert math.isclose(p['best_cer'], best['gmean_cer'])
    assert on_disk['per_fraction']['1.0']['regret'] == 0
    # the dry-run objective does not depend on the data, so every fraction ranks the common set exactly like 100 %
    for f in ('0.5', '0.3'):
        p = on_disk['per_fraction'][f]
        assert p['rank_n'] >= 5 and math.isclose(p['spearman_rho'], 1) and p['spearman_ci'][0] <= p['spearman_rho'] <= 1 + 1e-9
        assert p['regret'] >= 0                                             # the 100 % best is the minimum of the same function
    for name in ('ood_curves.png', 'rank_agreement.png', 'regret_cost.png', 'importances.png'):
        assert (run/'report'/name).read_bytes()[:8] == PNG_MAGIC, name
    for name in ('best_hparams.csv', 'common_scores.csv', 'rank_agreement.csv', 'regret.csv', 'ood_curves.csv', 'importances.csv',
                 'search_cost.csv'):
        assert (run/'report'/name).exists(), name
    curves = pd.read_csv(run/'report'/'ood_curves.csv')
    assert set(curves.fraction.astype(str).map(lambda v: f'{float(v):.1f}')) == {'1.0', '0.5', '0.3'}
    assert sorted(curves.step.unique()) == [3, 6] and curves.cer.between(0, 5).all()
    assert on_disk['long_runs']['eval_set'] == 'out-of-domain'
    table = pd.read_csv(run/'report'/'best_hparams.csv', index_col=0)
    assert list(table.index[:9]) == list(HPARAMS) and '30 % paper' in table.columns
    assert on_disk['conclusion'] and on_disk['conclusion'] == (run/'report'/'conclusion.md').read_text().strip()


def test_common_set_scores_match_objective(toy_run):
    "Scores computed by the stage equal what the search's objective gives for the same configuration."
    run, s = toy_run
    from asr_kd_nb.search import dry_run_scorer
    score = dry_run_scorer(run, 1.0, None)
    cs = pd.read_csv(run/'report'/'common_scores.csv', index_col=0)
    assert cs.shape[0] == s['common_set']['configurations'] >= 5
    for label, row in cs.iterrows():
        hp = {n: (int(row[n]) if n not in ('dropout', 'learning_rate') else float(row[n])) for n in HPARAMS}
        expect = score(hp, lambda i, v: None)['gmean']
        for f in s['fractions']:
            if not math.isnan(row[f]): assert math.isclose(row[f], expect, rel_tol=1e-9), (label, f)
    full = load_trials(run, 1.0)
    assert [l for l, _ in common_configs(full, 3)] == list(cs.index)


def test_rerun_reuses_scores(toy_run):
    run, s = toy_run
    again = datasize_stage(run, progress=False)
    assert again['common_set']['trained_now'] == 0 and again['long_runs']['trained_here'] == 0
    assert again['per_fraction'] == json.loads(json.dumps(s['per_fraction']))


def test_headline(toy_run):
    run, s = toy_run
    text = headline(run)
    assert str((run/'report').resolve()) in text.splitlines()[0]
    rows = [l for l in text.splitlines() if re.match(r'\s*\d+ %', l)]
    assert [r.split()[0] for r in rows] == ['100', '50', '30']
    assert f"{s['per_fraction']['0.3']['best_cer']:.3f}" in rows[2]


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
    run, _ = toy_run
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
        total, ok = _loaded_images(page)
        assert total >= len(uris) and ok == total, (page.name, total, ok)
    # a broken figure is detected by the same check
    bad = index.parent/'broken.html'
    bad.write_text('<html><body><img src="data:image/png;base64,AAAA"></body></html>')
    assert _loaded_images(bad) == (1, 0)
