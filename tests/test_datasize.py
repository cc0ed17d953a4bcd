"""The data-size table: the smoke study's table (columns, a learning curve, per-seed subsets), KD jobs on a toy cache, every job
recorded once after a worker is killed and the stage resumed, the conclusion's refusals, and the HTML report in Chromium."""
import base64, json, math, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest
import nbformat, optuna
from asr_kd_nb.config import study_config, save_config, write_json, read_json, load_config
from asr_kd_nb.datasize import TABLE_COLUMNS, TABLE_STUDY, datasize_stage, table_plan, job_key, table_stage
from asr_kd_nb.report import render_html_report, conclusion_text
from asr_kd_nb.rundir import fraction_ids
from asr_kd_nb.search import open_storage, default_storage, HPARAMS

optuna.logging.set_verbosity(optuna.logging.WARNING)
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
ROOT = Path(__file__).resolve().parents[1]


def test_smoke_table_has_the_shared_columns_a_learning_curve_and_per_seed_subsets(smoke_run):
    d = smoke_run['dir']
    table = pd.read_csv(d/'datasize'/'table.csv')
    assert list(table.columns) == TABLE_COLUMNS
    cfg = load_config(d)
    panel, plan = table_plan(d)
    assert len(table) == len(plan) * len(cfg.datasize.checkpoints)                       # every job, every checkpoint, once
    assert table.groupby(['config', 'fraction', 'seed', 'budget']).size().max() == 1
    assert table.epochs.round(6).nunique() >= 3 and table.test_cer.notna().mean() > 0.9
    assert set(table[table.paper].config) == {'paper-100', 'paper-70', 'paper-50', 'paper-30'} and (~table.paper).any()
    by_run = table.sort_values('budget').groupby(['config', 'fraction', 'seed'])
    assert (by_run.cpu_s.diff().dropna() > 0).all() and (by_run.audio_s.diff().dropna() > 0).all()   # one training: both accumulate
    jobs = pd.read_csv(d/'datasize'/'jobs.csv').set_index('job')
    small = min(cfg.splits.fractions)
    a, b = cfg.datasize.table_seeds[:2]
    first = panel.config.iloc[0]
    assert jobs.loc[f'{first}/{small:.1f}/s{a}', 'train_ids'] != jobs.loc[f'{first}/{small:.1f}/s{b}', 'train_ids']
    assert set(fraction_ids(d, small, a)) != set(fraction_ids(d, small, b))
    assert len((d/'datasize'/'table.md').read_text().strip().splitlines()) >= len(TABLE_COLUMNS)
    s = read_json(d/'report'/'summary.json')
    assert s['table']['jobs'] == len(plan) and s['table']['cost']['cpu_s_per_audio_s'] > 0
    assert s['fractions'] == ['0.5'] and s['conclusion'] and math.isfinite(s['margin'])
    v = s['per_fraction']['0.5']
    assert v['verdict'] in ('within', 'worse', 'cannot tell') and v['regret_by_n'] and 'coverage' in s['calibration']
    assert {'verdict_grid.png', 'learning_curves.png'} <= set(s['figures'])
    records = [json.loads(l) for l in (d/'notebooks'/'07_datasize.progress.jsonl').read_text().splitlines()]
    assert records and {r['task'] for r in records} == {'table trainings'}         # the stage's jobs only: the chapter's
    assert {r['total'] for r in records} == {len(plan)} and records[-1]['done'] == len(plan)   # examples write no records


def _toy_cache(run_dir: Path, n_main=28, n_ood=8, seed=0):
    "A small emission cache in the teacher stage's on-disk format (random linear 'teacher' over random MFCCs), and its splits."
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
    m = ids[:n_main]
    write_json(run_dir/'splits.json', {'train': m[:16], 'subset_seeds': [0, 1],
                                       'fractions': {'0': {'1.0': m[:16], '0.5': m[:8]}, '1': {'1.0': m[:16], '0.5': m[8:16]}},
                                       'dev_folds': {'cluster-4': m[24:]},
                                       'test_folds': {'cluster-0': m[16:20], 'cluster-1': m[20:24]}, 'seed': 0})


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    "The table stage with real KD trainings (tiny students) on a toy cache: 1 + 4 configurations × 2 fractions × 2 seeds."
    run = tmp_path_factory.mktemp('datasize-run')
    save_config(study_config('smoke', {'datasize': {'panel_size': 1, 'workers': 2}}), run)
    _toy_cache(run)
    return {'run': run, 'summary': datasize_stage(run)}


def test_kd_table_on_a_toy_cache(toy_run):
    run, s = toy_run['run'], toy_run['summary']
    t = pd.read_csv(run/'datasize'/'table.csv')
    assert len(t) == 5 * 2 * 2 * 3 and t.test_cer.between(0, 5).all() and t.dev_cer.between(0, 5).all()
    assert t.ood_cer.notna().all() and t.real_cer.isna().all()                               # an OOD set, no real-speech set
    one = t[(t.config == 'paper-100') & (t.seed == 0)].set_index(['fraction', 'budget'])
    assert one.loc[(1.0, 1.0), 'epochs'] == pytest.approx(1.0) and one.loc[(0.5, 2.0), 'epochs'] == pytest.approx(2.0)
    assert one.loc[(0.5, 1.0), 'steps'] < one.loc[(1.0, 1.0), 'steps']                       # budgets follow the data
    assert one.loc[(1.0, 1.0), 'parameters'] > 0
    assert s['selection_set'] == 'dev folds' and (run/'report'/'learning_curves.png').read_bytes()[:8] == PNG_MAGIC
    assert read_json(run/'report'/'summary.json')['conclusion'] == (run/'report'/'conclusion.md').read_text().strip()


def test_rerun_trains_nothing(toy_run):
    run = toy_run['run']
    before = pd.read_csv(run/'datasize'/'jobs.csv')
    again = datasize_stage(run)
    after = pd.read_csv(run/'datasize'/'jobs.csv')
    assert after.trial.tolist() == before.trial.tolist() and again['table'] == toy_run['summary']['table']


def _synthetic_run(tmp_path) -> Path:
    run = tmp_path/'run'
    save_config(study_config('smoke', {'datasize': {'objective': 'asr_kd_nb.datasize:synthetic_table_job', 'panel_size': 2},
                                       'search': {'heartbeat_interval': 1, 'grace_period': 3, 'poll_seconds': 0.5}}), run)
    ids = [f'u{i:02d}' for i in range(20)]
    write_json(run/'splits.json', {'train': ids, 'subset_seeds': [0, 1], 'test_folds': {'c': ['x']}, 'dev_folds': {'d': ['y']},
                                   'fractions': {'0': {'1.0': ids, '0.5': ids[:10]}, '1': {'1.0': ids, '0.5': ids[10:]}}})
    return run


def _trials(run):
    """The table study's trials as the workers have published them. Read under the workers' own study lock: a worker creates
    the storage and the study while holding it, so this never sees (or creates) a half-made database, whatever the load."""
    from asr_kd_nb.search import StudyLock
    sc, url = load_config(run).search, default_storage(run)
    lock = StudyLock(url, TABLE_STUDY)
    try:
        with lock:
            if not (run/'search'/'studies.db').exists(): return []   # the worker has not made the storage yet
            try: return optuna.load_study(study_name=TABLE_STUDY, storage=open_storage(url, sc)).get_trials(deepcopy=False)
            except KeyError: return []   # the worker has not created the study yet
    finally: lock.close()


def test_every_job_recorded_once_after_a_killed_worker(tmp_path):
    "A worker is killed while a job runs; the resumed stage fails that trial, runs the job again, and records every job once."
    run = _synthetic_run(tmp_path)
    env = {**os.environ, 'ASR_KD_DRY_RUN_SECONDS': '3', 'PYTHONPATH': f'{ROOT}{os.pathsep}{os.environ.get("PYTHONPATH", "")}'}
    p = subprocess.Popen([sys.executable, '-c', f'from asr_kd_nb.datasize import table_worker; table_worker({str(run)!r})'],
                         env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:   # wait on the storage: two jobs done and a third one running
            ts = _trials(run)
            done = sum(t.state.name == 'COMPLETE' for t in ts)
            if done >= 2 and any(t.state.name == 'RUNNING' and 'worker' in t.user_attrs for t in ts): break   # its heartbeat runs
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        else: pytest.fail('the worker published no running job within 120 s')
        killed = {t.user_attrs['job_key'] for t in _trials(run) if t.state.name == 'RUNNING'}
        os.killpg(p.pid, signal.SIGKILL); p.wait(30)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait(30)
    os.environ['ASR_KD_DRY_RUN_SECONDS'] = '0.05'
    try: table, jobs = table_stage(run, workers=2)
    finally: del os.environ['ASR_KD_DRY_RUN_SECONDS']
    _, plan = table_plan(run)
    ts = _trials(run)
    complete = pd.Series([t.user_attrs['job_key'] for t in ts if t.state.name == 'COMPLETE']).value_counts()
    assert set(complete.index) == {job_key(j) for j in plan} and (complete == 1).all()    # every job, once
    assert killed and all(jobs.set_index('job').loc[k, 'attempts'] == 2 for k in killed)   # the killed job ran again
    assert len(table) == len(plan) * 3 and table.test_cer.notna().all()
    assert (jobs.state == 'COMPLETE').all()


def test_conclusion_refuses_when_students_did_not_learn():
    s = {'noise_ceiling': {'regret': 0.0, 'regret_ci': [0.0, 0.0], 'spearman_rho': 0.9, 'spearman_ci': [0.8, 1.0]},
         'per_fraction': {'1.0': {'best_cer': 0.947}, '0.5': {'regret': 0.2, 'regret_ci': [0.1, 0.3], 'cost_ratio': 0.5}}}
    t = conclusion_text(s)
    assert t.startswith('The students did not learn') and 'worse' not in t and 'as good' not in t
    s['per_fraction']['1.0']['best_cer'] = 0.2
    assert 'no: 50 % picked measurably worse' in conclusion_text(s)


def test_kd_scorer_trains_each_fraction_on_its_ids_for_the_epoch_budget(tmp_path, monkeypatch):
    import asr_kd_nb.kd as kd
    from asr_kd_nb.search import kd_scorer
    from asr_kd_nb.conformer import PAPER_BEST, scale_hparams
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
    for f in (1.0, 0.5):
        calls.clear()
        out = kd_scorer(run, f, cfg)(hp, lambda *report: None)
        ids = fraction_ids(run, f)
        assert len(calls) == 2 and all(c[0] == ids for c in calls)                       # exactly this fraction's ids
        want = kd.budget_steps(cfg.kd, len(ids), hp['minibatch_size'])
        assert all(c[1] == c[2] == want for c in calls) and all(c[3] == 2 * len(ids) for c in calls)   # 2 epochs
        assert out['steps'] == 2 * want and out['train_ids'] == len(ids)


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
    bad = index.parent/'broken.html'
    bad.write_text('<html><body><img src="data:image/png;base64,AAAA"></body></html>')
    assert _loaded_images(bad) == (1, 0)
