"""A long stage is never silent: `asr-kd run` prints the search stage's progress (trials done of all, the best so far, the time
left) while the stage runs, from records its worker processes write. The search runs the dry-run objective (no training) at
a fixed pace, through the real command, papermill kernel and worker processes."""
import json, os, re, time
from pathlib import Path
from conftest import asr_kd

PACE_S = 2.0   # seconds per trial: 10 trials on 2 workers keep the search running for about 10 s
LINE = re.compile(r'^\s+search frac-1\.00: (\d+)/10 trials \(\d+ %\), best [0-9.]+, .*ETA (?:\d+ s|\d+ min \d+ s)$', re.M)


def paced_dry_run(run_dir, fraction, cfg):
    "The dry-run scorer, `PACE_S` s per trial (the chapter's own tests set its `ASR_KD_DRY_RUN_SECONDS` to 0 in the kernel)."
    from asr_kd_nb.search import dry_run_scorer
    inner = dry_run_scorer(run_dir, fraction, cfg)
    def score(hp, report, seeds=None, scale=1.0):
        time.sleep(PACE_S); return inner(hp, report, seeds, scale)
    score.n_reports = inner.n_reports
    return score


def test_run_prints_search_progress_with_the_time_left(tmp_path):
    cfg = tmp_path/'dry.json'
    cfg.write_text(json.dumps({'splits': {'fractions': [1.0]},
                               'search': {'objective': 'test_progress:paced_dry_run', 'workers': 2, 'replicates': 2,
                                          'n_trials': 5, 'pruner': 'none'}}))
    run = tmp_path/'run'
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get('PYTHONPATH', '')])   # workers import the scorer from here
    r = asr_kd('run', '--preset', 'smoke', '--config', cfg, '--run-dir', run, '--stages', '06_search', timeout=900,
               env={'PYTHONPATH': path})
    assert r.returncode == 0, r.stderr[-4000:]
    err = r.stderr
    start, end = err.index('06_search/frac-1.00: running'), err.index('06_search/frac-1.00: finished')
    inside = err[start:end]   # what the console showed between the stage's running and finished lines
    done = [int(d) for d in LINE.findall(inside)]
    assert done and all(0 < d < 10 for d in done), inside
    assert re.search(r'search frac-1\.00: 10/10 trials \(100 %\), best [0-9.]+, .*done in', inside), inside
    records = [json.loads(l) for l in (run/'notebooks'/'06_search-frac-1.00.progress.jsonl').read_text().splitlines()]
    assert {r['task'] for r in records} == {'search frac-1.00'} and {r['total'] for r in records} == {10}
    assert max(r['done'] for r in records) == 10 and len(records) >= 10   # a record per trial, from both workers
