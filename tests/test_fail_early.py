"""Fail before the work, never after it: every bad config of the table below is refused before stage 00 (exit 2,
the key named, no run directory), the late-failure audit in the config chapter is the one the code makes, and one
`asr-kd run` at a time holds a run directory."""
import json, os, socket, subprocess, sys, time
from dataclasses import fields
from pathlib import Path
import pytest
from conftest import asr_kd, ASR_KD, ROOT, refused_run
from asr_kd_nb.pipeline import available_stages, RunDirLock, RUN_LOCK
from asr_kd_nb.config import (_SECTIONS, SEED_KEYS, SEED_COUNTS, study_config, check_seeds, check_ranges, config_audit,
                              write_config_audit, PRESETS)


def w2v2_teacher(path, stride=None):
    "A tiny wav2vec2 CTC teacher folder (`save_pretrained`); `stride` replaces the conv strides of its config."
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Config
    from asr_kd_nb.teacher import make_w2v2
    model, proc = make_w2v2()
    if stride:
        d = model.config.to_dict(); d.update(conv_stride=stride, conv_kernel=[10, 3, 3, 3, 3, 2, 2])
        model = Wav2Vec2ForCTC(Wav2Vec2Config(**d))
    model.save_pretrained(path); proc.save_pretrained(path)
    return str(path)


# --- the table: each refused before any stage, exit 2, the key named, no run directory
@pytest.mark.parametrize('name', ['seed', 'postgresql', 'empty-teacher', 'stride-10'])
def test_late_failures_are_refused_before_stage_00(tmp_path, name):
    if name == 'seed': config, key = {'seed': -1}, 'seed=-1'
    elif name == 'postgresql': config, key = {'search': {'storage': 'postgresql://nobody:x@127.0.0.1:1/none'}}, 'search.storage'
    elif name == 'empty-teacher':
        (tmp_path/'empty').mkdir(); config, key = {'teacher': {'source': str(tmp_path/'empty')}}, 'teacher.source'
    else: config, key = {'teacher': {'source': w2v2_teacher(tmp_path/'w2v2', [10, 1, 1, 1, 1, 1, 1])}}, 'teacher.source'
    r, dt = refused_run(tmp_path, config)
    assert key in r.stderr, r.stderr
    if name == 'postgresql': assert 'host 127.0.0.1:1' in r.stderr and 'Connection refused' in r.stderr and ':x@' not in r.stderr
    if name == 'stride-10': assert '10-sample stride' in r.stderr and '320' in r.stderr
    print(f'{name}: refused in {dt:.1f} s')


def test_every_seed_field_is_checked_and_every_preset_passes_the_rules():
    available_stages()
    named = {f'{s}.{f.name}' for s, c in _SECTIONS.items() if not s.startswith('_') for f in fields(c) if 'seed' in f.name}
    assert named <= set(SEED_KEYS) | set(SEED_COUNTS), named - set(SEED_KEYS) - set(SEED_COUNTS)
    for p in PRESETS:                               # the checks added here refuse no preset
        cfg = study_config(p); check_seeds(cfg); check_ranges(cfg)
    with pytest.raises(ValueError, match=r'kd.seeds=\[42, 4294967296\]'): check_seeds(study_config('smoke', {'kd': {'seeds': [42, 2**32]}}))
    with pytest.raises(ValueError, match='search.wilcoxon_p=1.5'): check_ranges(study_config('smoke', {'search': {'wilcoxon_p': 1.5}}))


# --- the late-failure audit
def test_the_audit_table_in_the_config_chapter_is_current_and_names_every_key():
    assert write_config_audit(check=True), 'the audit table in nbs/00_config.ipynb is stale: run asr_kd_nb.config.write_config_audit()'
    nb = json.loads((ROOT/'nbs'/'00_config.ipynb').read_text(encoding='utf-8'))
    text = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    keys = ['preset', 'seed', 'device', 'hub'] + [f'{s}.{f.name}' for s, c in _SECTIONS.items() if not s.startswith('_') for f in fields(c)]
    assert [k for k in keys if f'| `{k}` |' not in text] == []
    rows = {r['key']: r for r in config_audit()}
    late = [k for k, r in rows.items() if r['first_read'] > '00' and r['checked'] == ['type']
            and not isinstance(getattr(_SECTIONS[k.split('.')[0]](), k.split('.')[1]), bool)]
    assert late == [], f'keys read after stage 00 whose value is checked only for its type: {late}'


# --- one run per run directory
def lock_holder(run):
    "The lock file's record, or None while there is none (the first run publishes it under its flock before anything else)."
    try: return json.loads((run/RUN_LOCK).read_text())
    except (FileNotFoundError, ValueError): return None


def test_second_run_on_a_run_dir_in_use_exits_2_at_once_and_the_first_finishes(tmp_path):
    cfg = tmp_path/'c.json'; cfg.write_text(json.dumps({'corpus': {'n_utterances': 60, 'n_speakers': 3, 'n_ood': 6, 'n_ood_speakers': 2}}))
    run = tmp_path/'run'
    args = ['run', '--preset', 'smoke', '--config', cfg, '--run-dir', run, '--stages', '00_corpus', '--no-progress']
    log = open(tmp_path/'first.log', 'w')
    first = subprocess.Popen([*ASR_KD, *map(str, args)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while (lock_holder(run) or {}).get('pid') != first.pid:
            assert first.poll() is None, (tmp_path/'first.log').read_text()[-3000:]
            assert time.time() - t0 < 300, 'the first run never took its lock'
            time.sleep(0.2)
        t = time.time()
        second = asr_kd(*args, timeout=120)
        dt = time.time() - t
        assert second.returncode == 2 and 'is in use by another `asr-kd run`' in second.stderr, second.stderr[-3000:]
        assert f'PID {first.pid} on host {socket.gethostname()}' in second.stderr and ': running' not in second.stderr
        assert dt < 10, f'{dt:.1f} s to refuse'
        assert lock_holder(run)['pid'] == first.pid     # the first run's lock is left as it was
        assert first.wait(timeout=1800) == 0, (tmp_path/'first.log').read_text()[-3000:]
    finally:
        if first.poll() is None: first.kill()
        log.close()
    assert json.loads((run/'stages.json').read_text()).keys() == {'00_corpus'}
    assert (run/'corpus'/'manifest.jsonl').exists() and not (run/RUN_LOCK).exists()   # finished normally, lock given back
    print(f'second run refused in {dt:.1f} s')


def test_a_dead_runs_lock_is_taken_over_and_another_hosts_is_not(tmp_path):
    run = tmp_path/'run'; run.mkdir()
    cfg = tmp_path/'c.json'; cfg.write_text(json.dumps({'seed': -1}))   # refused after the lock: cheap
    (run/RUN_LOCK).write_text(json.dumps({'host': socket.gethostname(), 'pid': 999999, 'started': 'earlier'}))
    r = asr_kd('run', '--preset', 'smoke', '--config', cfg, '--run-dir', run, timeout=300)
    assert r.returncode == 2 and 'took over the lock' in r.stderr and 'PID 999999' in r.stderr and 'seed=-1' in r.stderr, r.stderr
    assert run.is_dir() and not (run/RUN_LOCK).exists()            # a directory it did not make stays; the lock is given back
    other = {'host': 'elsewhere.example', 'pid': 4242, 'started': 'earlier'}
    (run/RUN_LOCK).write_text(json.dumps(other))
    r = asr_kd('run', '--preset', 'smoke', '--run-dir', run, timeout=300)
    assert r.returncode == 2 and 'locked by a run on another host (PID 4242 on host elsewhere.example' in r.stderr, r.stderr
    assert json.loads((run/RUN_LOCK).read_text()) == other          # reported, not taken


def test_search_workers_do_not_take_the_run_lock(tmp_path):
    "`asr-kd search` on a run directory whose `asr-kd run` is going works as before: workers coordinate through the storage."
    from asr_kd_nb.config import save_config, write_json
    run = tmp_path/'run'
    save_config(study_config('smoke', {'search': {'n_trials': 1, 'pruner': 'none', 'replicates': 1}}, sections=['search']), run)
    write_json(run/'splits.json', {'train': ['a', 'b'], 'fractions': {'1.0': ['a', 'b']}, 'test_folds': {}})
    with RunDirLock(run, 'asr-kd run (this test)'):
        r = asr_kd('search', '--run-dir', run, '--fraction', '1.0', '--objective', 'asr_kd_nb.search:dry_run_scorer', timeout=300,
                   env={'ASR_KD_DRY_RUN_SECONDS': '0'})
        assert r.returncode == 0, r.stderr[-3000:]
        assert lock_holder(run)['pid'] == os.getpid()
