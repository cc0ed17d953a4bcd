"""Many `asr-kd search` workers on one PostgreSQL study (the dry-run objective: only the storage and the study machinery
work): exactly N finished trials, no enqueued configuration twice, no lost result. The 16-worker figures (PostgreSQL vs
SQLite) come from `asr-kd bench workers`; CI runs 8 workers."""
import pytest
import optuna
from optuna.trial import TrialState
from asr_kd_nb.bench_workers import bench_workers
from asr_kd_nb.search import study_name, storage_url
from test_search import postgres_url, check_exactly_n   # noqa: F401  (fixture: a throwaway server from scripts/postgres.sh)

pytestmark = pytest.mark.filterwarnings('ignore::optuna.exceptions.ExperimentalWarning')


def test_eight_workers_postgresql(tmp_path, postgres_url):
    n = 24
    r = bench_workers(postgres_url, workers=8, n_trials=n, pause=0.05, timeout=300, work_dir=tmp_path)
    assert r['ok'], r
    assert r['finished'] == n and r['states'] == {'COMPLETE': n}
    assert r['duplicated_enqueued_params'] == 0 and r['enqueued_completed'] == 4 and r['lost_results'] == []
    assert r['workers_with_trials'] >= 4                     # the work really was shared
    assert r['trials_per_s'] > 0 and 0 <= r['idle_share'] < 1
    study = optuna.load_study(study_name=study_name(1.0), storage=storage_url(postgres_url))
    check_exactly_n(study, n, workers_min=4)                  # the search tests' own definition of "exactly N, nothing lost"
    assert not any(t.state == TrialState.FAIL for t in study.trials)
    assert not (tmp_path/'run'/'search'/'studies.db').exists()   # the study lived in PostgreSQL
