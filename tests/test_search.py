"""Reliability of the hyperparameter search (asr_kd_nb.search): resume after a killed worker, several workers on one local
study, and workers sharing a real PostgreSQL server. Workers are real subprocesses running the worker command
(`asr_kd_nb.search.worker_main`) with the dry-run scorer, so only the study machinery is exercised, not the KD training; the
selection tests at the end run the KD objective in-process on a toy cache (dev folds selected on, test CER beside it, a
subset seed per replicate)."""
import glob, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest
import optuna
from optuna.trial import TrialState
from asr_kd_nb.config import study_config, save_config
from sqlalchemy.engine import make_url
from asr_kd_nb.search import default_storage, study_name, storage_url, sampler_seed, SearchConfig, StudyLock
from asr_kd_nb.rundir import study_dir

REPO = Path(__file__).resolve().parents[1]
WORKER = 'import sys; from asr_kd_nb.search import worker_main; sys.exit(worker_main())'
optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings('ignore::optuna.exceptions.ExperimentalWarning')


def make_run(tmp_path, n_trials, **search):
    "A run directory holding only a smoke config with a fast heartbeat."
    cfg = {'n_trials': n_trials, 'pruner': 'none', 'heartbeat_interval': 1, 'grace_period': 3, 'poll_seconds': 0.5, **search}
    save_config(study_config('smoke', {'search': cfg}, sections=['search']), tmp_path)
    return tmp_path


def start_worker(run_dir, storage, seconds, log):
    "A worker process on the 1.0 study with the dry-run scorer (`seconds` per scored student)."
    env = {**os.environ, 'ASR_KD_DRY_RUN_SECONDS': str(seconds)}
    return subprocess.Popen([sys.executable, '-c', WORKER, '--run-dir', str(run_dir), '--fraction', '1.0', '--storage', storage,
                             '--objective', 'asr_kd_nb.search:dry_run_scorer'],
                            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def load(storage):
    "The 1.0 study (SQLite read with the workers' 60 s busy timeout, so a reader under load waits instead of failing)."
    url = storage_url(storage)
    kw = {'connect_args': {'timeout': 60}} if url.startswith('sqlite') else {}
    return optuna.load_study(study_name=study_name(1.0), storage=optuna.storages.RDBStorage(url, engine_kwargs=kw))


def published_trials(url):
    """The 1.0 study's trials as the worker has published them, or None before its study exists. Read under the workers' own
    study lock: a worker creates the storage and the study while holding it, so this never sees (or creates) a half-made
    database, whatever the load on the machine."""
    lock = StudyLock(url, study_name(1.0))
    try:
        with lock:
            if not Path(make_url(url).database).exists(): return None     # the worker has not created the storage yet
            try: return load(url).get_trials(deepcopy=False)
            except KeyError: return None                                  # storage made, study not yet (cannot happen under the lock)
    finally: lock.close()


HANG_GUARD = 900   # seconds: only a hung worker takes this long; never a measure of speed (a loaded machine is slow, not wrong)


def wait_all(procs, timeout, logs):
    "Wait for the workers to exit (they publish their results before); `timeout` only guards against a hang."
    timeout = max(timeout, HANG_GUARD)
    t0 = time.time()
    for p in procs:
        try: p.wait(timeout=max(1, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            for q in procs: q.kill()
            pytest.fail('workers did not finish in time; logs:\n' + '\n'.join(Path(l).read_text()[-3000:] for l in logs))
    for p, l in zip(procs, logs):
        assert p.returncode == 0, f'worker exited with {p.returncode}:\n{Path(l).read_text()[-3000:]}'


def check_exactly_n(study, n, workers_min=1):
    "Exactly n completed trials, numbers unique and contiguous, every result present, paper configurations enqueued once."
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == n, [s.name for s in states]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))), numbers
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in done:
        assert t.value is not None and len(t.user_attrs['cers']) == 4 and sorted(t.intermediate_values) == [0, 1, 2, 3]
    labels = [t.user_attrs['enqueued'] for t in done if 'enqueued' in t.user_attrs]
    want = ['paper-best-1.0', 'paper-best-0.7', 'paper-best-0.5', 'paper-best-0.3'][:min(4, n)]
    # each paper configuration completed exactly once (a killed one is retried later, so the order may change)
    assert sorted(labels) == sorted(want), labels
    assert len({t.user_attrs['worker'] for t in done}) >= workers_min
    return done


def test_resume_after_kill(tmp_path):
    "kill -9 mid-trial; a restarted worker keeps finished trials, fails the dead one by heartbeat, retries it, reaches N."
    n = 6
    run = make_run(tmp_path/'run', n)
    url = default_storage(run)
    logs = [tmp_path/'w1.log', tmp_path/'w2.log']
    p = start_worker(run, url, 0.4, open(logs[0], 'w'))
    t0, victim = time.time(), None
    created = False
    while time.time() - t0 < HANG_GUARD and p.poll() is None:
        time.sleep(0.2)
        if not created:   # first wait for the worker to create its storage and study (read under its lock)
            created = published_trials(url) is not None
            continue
        p.send_signal(signal.SIGSTOP)   # a snapshot of a worker that cannot move on while it is read, however slow the read
        try:
            trials = load(url).get_trials(deepcopy=False)
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            running = [t for t in trials if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 1]
            if len(done) >= 2 and running:
                p.kill(); p.wait(); victim = running[0].number
                before = {t.number: (t.value, t.params) for t in done}
                break
        finally:
            if p.poll() is None: p.send_signal(signal.SIGCONT)
    assert victim is not None, 'the worker never had a trial running after two finished ones:\n' + logs[0].read_text()[-3000:]
    after_kill = load(url)
    assert after_kill.trials[victim].state == TrialState.RUNNING          # nobody has noticed yet
    p2 = start_worker(run, url, 0.4, open(logs[1], 'w'))
    wait_all([p2], 150, logs)
    study = load(url)
    done = check_exactly_n(study, n)
    for num, (value, params) in before.items():                         # finished before the kill: kept as they were
        assert study.trials[num].state == TrialState.COMPLETE and (study.trials[num].value, study.trials[num].params) == (value, params)
    dead = study.trials[victim]
    assert dead.state == TrialState.FAIL and 'reason' not in dead.user_attrs   # failed by the heartbeat, not by an exception
    retries = [t for t in done if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim]
    assert len(retries) == 1 and retries[0].params == dead.params
    df = pd.read_csv(study_dir(run, 1.0, 0)/'trials.csv')
    assert (df.state == 'COMPLETE').sum() == n and df.loc[df.number == retries[0].number, 'retried_from'].item() == victim
    assert (study_dir(run, 1.0, 0)/'best.json').exists()


def test_three_workers_one_sqlite_study(tmp_path):
    "3 workers started together on a fresh SQLite study finish exactly N trials, none duplicated or lost."
    n = 9
    run = make_run(tmp_path/'run', n)
    url = default_storage(run)
    logs = [tmp_path/f'w{i}.log' for i in range(3)]
    procs = [start_worker(run, url, 0.25, open(l, 'w')) for l in logs]
    wait_all(procs, 150, logs)
    study = load(url)
    check_exactly_n(study, n, workers_min=2)
    assert len(study.trials) == n                                        # no failed or surplus trials either
    assert len(pd.read_csv(study_dir(run, 1.0, 0)/'trials.csv')) == n


def _postgres_bins() -> bool:
    return any(shutil.which(b) for b in ('initdb',)) or bool(glob.glob('/usr/lib/postgresql/*/bin/initdb'))


@pytest.fixture
def postgres_url(tmp_path):
    "A PostgreSQL URL: $ASR_KD_PG_URL, else a throwaway server started with scripts/postgres.sh (skip only without binaries)."
    if os.environ.get('ASR_KD_PG_URL'):
        yield os.environ['ASR_KD_PG_URL']; return
    if not _postgres_bins(): pytest.skip('no PostgreSQL server binaries (initdb) and no ASR_KD_PG_URL')
    r = subprocess.run(['bash', str(REPO/'scripts'/'postgres.sh'), 'start'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f'scripts/postgres.sh start failed ({r.returncode}):\n{r.stdout}\n{r.stderr}'
    env = dict(line.removeprefix('export ').split('=', 1) for line in r.stdout.split('\n') if line.startswith('export '))
    try: yield env['ASR_KD_PG_URL']
    finally: subprocess.run(['bash', str(REPO/'scripts'/'postgres.sh'), 'stop', env['ASR_KD_PG_DIR']], timeout=60)


def test_two_workers_postgresql(tmp_path, postgres_url):
    "2 worker processes sharing a real PostgreSQL study finish exactly N trials, none duplicated or lost."
    n = 6
    try: optuna.delete_study(study_name=study_name(1.0), storage=storage_url(postgres_url))   # a reused server (ASR_KD_PG_URL)
    except KeyError: pass
    run = make_run(tmp_path/'run', n)
    logs = [tmp_path/f'w{i}.log' for i in range(2)]
    procs = [start_worker(run, postgres_url, 0.25, open(l, 'w')) for l in logs]
    wait_all(procs, 150, logs)
    study = load(postgres_url)
    check_exactly_n(study, n, workers_min=2)
    assert len(study.trials) == n
    assert not (run/'search'/'studies.db').exists()                       # the study really lived in PostgreSQL
    best = pd.read_json(study_dir(run, 1.0, 0)/'best.json', typ='series')
    assert best['storage'].startswith('postgresql') and best['counts']['COMPLETE'] == n


def test_replicate_seeds_differ():
    "Every (fraction, replicate) study has its own sampler path; the paired design shares one across fractions."
    seeds = {(f, r): [sampler_seed(0, f, r, n) for n in range(5)] for f in (1.0, 0.7, 0.5, 0.3) for r in range(3)}
    assert len({tuple(v) for v in seeds.values()}) == len(seeds)
    assert sampler_seed(0, 1.0, 2, 7, paired=True) == sampler_seed(0, 0.3, 2, 7, paired=True) != sampler_seed(0, 0.3, 1, 7, paired=True)


def test_two_replicate_studies_sample_differently(tmp_path):
    "The first trial after the enqueued paper configurations differs between replicates and between fractions."
    from asr_kd_nb.config import write_json
    from asr_kd_nb.search import search_worker
    from asr_kd_nb.rundir import read_trials
    run = make_run(tmp_path/'run', 5, replicates=2)
    write_json(run/'splits.json', {'train': ['a', 'b'], 'fractions': {'0': {'1.0': ['a', 'b'], '0.5': ['a']}}, 'subset_seeds': [0], 'test_folds': {}})
    os.environ['ASR_KD_DRY_RUN_SECONDS'] = '0'
    firsts = []
    for f, r in ((1.0, 0), (1.0, 1), (0.5, 0)):
        search_worker(run, f, objective='asr_kd_nb.search:dry_run_scorer', replicate=r)
        t = read_trials(run, f, r)
        firsts.append(tuple(t[t.enqueued == ''].iloc[0][['learning_rate', 'dropout']]))
    assert len(set(firsts)) == 3, firsts
    with pytest.raises(ValueError, match='search.replicates=2'): search_worker(run, 1.0, objective='asr_kd_nb.search:dry_run_scorer', replicate=2)


def test_paper_preset_is_the_original_search():
    from asr_kd_nb.config import section_preset, study_config
    from asr_kd_nb.pipeline import available_stages
    available_stages()
    cfg = study_config('paper')
    assert (cfg.search.n_trials, cfg.search.replicates, cfg.search.enqueue_paper, cfg.search.pruner) == (50, 1, False, 'none')
    assert (cfg.kd.loss, cfg.kd.protocol, cfg.kd.budget, cfg.kd.epochs, cfg.kd.seeds) == ('paper', 'paper', 'epochs', 1.0, [42, 24, 0, 98])
    assert cfg.clustering.relabel_by_size is False and (cfg.clustering.algorithm, cfg.clustering.k) == ('birch', 10)
    assert (cfg.splits.test_clusters, cfg.splits.train_clusters) == ([0, 1, 3, 9], [2, 4, 5, 6, 7, 8])
    assert cfg.teacher.max_minutes == 0                                   # the budget is steps, not wall-clock minutes
    d, f = study_config('default'), study_config('full')
    assert d.search.replicates >= 2 and d.kd.loss == 'correct' and d.kd.budget == 'epochs'
    assert not d.search.enqueue_paper and not f.search.enqueue_paper   # no configuration shared by every search (07's panel holds the paper's)
    assert f.search.replicates >= 3 and f.search.n_trials >= 30 and f.datasize.panel_size >= 24


def toy_kd_run(tmp_path, select_on='dev', replicates=2):
    "A smoke-config run on a toy emission cache with dev and test folds and two subset seeds whose 0.5 subsets differ."
    from asr_kd_nb.config import write_json, read_json
    from test_datasize import _toy_cache   # the data-size tests' cache in the teacher stage's on-disk format
    run = tmp_path/'run'
    save_config(study_config('smoke', {'search': {'pruner': 'none', 'n_trials': 2, 'replicates': replicates, 'enqueue_paper': False,
                                                  'select_on': select_on}, 'kd': {'seeds': [1]}}), run)
    _toy_cache(run)
    s = read_json(run/'splits.json'); train = s['train']
    write_json(run/'splits.json', {**s, 'subset_seeds': [0, 1], 'fractions': {'0': {'1.0': train, '0.5': train[:8]},
                                                                              '1': {'1.0': train, '0.5': train[8:]}}})
    return run


def gmean(values):
    import math
    values = list(values)
    return math.exp(sum(map(math.log, values)) / len(values))


def test_kd_search_selects_on_dev_records_test_cer_and_replicates_draw_their_own_subsets(tmp_path, monkeypatch):
    "The objective is the dev folds' CER; every complete trial carries its test folds' CER; replicate r trains on subset seed r."
    import asr_kd_nb.kd as kd
    from asr_kd_nb.config import read_json
    from asr_kd_nb.search import search_worker
    from asr_kd_nb.rundir import read_trials, fraction_ids, dev_folds, test_folds
    run = toy_kd_run(tmp_path)
    trained, real = [], kd.train_student
    monkeypatch.setattr(kd, 'train_student', lambda hp, cache, ids, *a, **k: trained.append(list(ids)) or real(hp, cache, ids, *a, **k))
    for r in (0, 1):
        trained.clear()
        best = search_worker(run, 0.5, replicate=r)
        assert trained and all(ids == fraction_ids(run, 0.5, r) for ids in trained)       # this replicate's own subset
        assert (best['select_on'], best['objective'], best['subset_seed']) == ('dev', 'gmean CER, dev clusters', r)
        df = read_trials(run, 0.5, r)
        done = df[df.state == 'COMPLETE']
        assert len(done) >= 1 and done.test_cer.notna().all() and (done.subset_seed == r).all()
        dev_cols = [c for c in df.columns if c.startswith('cer:')]
        test_cols = [c for c in df.columns if c.startswith('test_cer:')]
        assert sorted(c.split('/')[1] for c in dev_cols) == sorted(dev_folds(run))             # the objective: dev folds only
        assert sorted(c.split('/')[1] for c in test_cols) == sorted(test_folds(run))
        for _, row in done.iterrows():
            assert abs(row.gmean_cer - gmean(row[dev_cols])) < 1e-9 and abs(row.test_cer - gmean(row[test_cols])) < 1e-9
        assert best['best']['test_cer'] == pytest.approx(done.loc[done.gmean_cer.idxmin(), 'test_cer'])
    assert fraction_ids(run, 0.5, 0) != fraction_ids(run, 0.5, 1)
    study = optuna.load_study(study_name='frac-0.50-r1', storage=default_storage(run))
    assert study.metric_names == ['gmean CER, dev clusters'] and study.user_attrs['select_on'] == 'dev'


def test_paper_preset_selects_on_test(tmp_path):
    "The paper preset's config selects on the test folds (no dev folds); such a search's objective is the test CER, and says so."
    from asr_kd_nb.config import read_json
    from asr_kd_nb.search import search_stage
    from asr_kd_nb.rundir import test_folds, fraction_summary_path
    import asr_kd_nb.splits  # noqa: F401  (registers the splits section)
    cfg = study_config('paper')
    assert (cfg.search.select_on, cfg.splits.n_dev_folds) == ('test', 0)
    assert all(study_config(p).search.select_on == 'dev' and study_config(p).splits.n_dev_folds >= 1 for p in ('smoke', 'default', 'full'))
    run = toy_kd_run(tmp_path, select_on='test', replicates=1)
    s = search_stage(run, 1.0, workers=1)
    assert (s['select_on'], s['objective']) == ('test', 'gmean CER, test clusters')
    assert read_json(fraction_summary_path(run, 1.0))['select_on'] == 'test'
    df = pd.read_csv(study_dir(run, 1.0, 0)/'trials.csv')
    done = df[df.state == 'COMPLETE']
    assert sorted({c.split('/')[1] for c in df.columns if c.startswith('cer:')}) == sorted(test_folds(run))
    assert len(done) and (done.test_cer - done.gmean_cer).abs().max() < 1e-12   # selecting on test: the objective is the test CER
