"""The researcher's workbench: chapters open on the project kernel in JupyterLab and save clean, a kept student transcribes
audio, runs compare side by side, and a run's console and executed notebooks are free of noise."""
import json, os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import numpy as np, pytest, soundfile as sf
from conftest import ROOT, asr_kd

NBS = ROOT/'nbs'
CHAPTERS = sorted(NBS.glob('*.ipynb'))

def test_every_chapter_runs_on_the_project_kernel():
    "kernelspec of every chapter is asr-kd, and nbdev-clean (what the test command checks) keeps it."
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    cfg = get_config(path=NBS)
    assert cfg.jupyter_hooks, 'pyproject.toml [tool.nbdev] must enable jupyter_hooks'
    assert len(CHAPTERS) >= 10
    for p in CHAPTERS:
        nb = json.loads(p.read_text(encoding='utf-8'))
        assert nb['metadata']['kernelspec'] == {'display_name': 'asr-kd', 'language': 'python', 'name': 'asr-kd'}, p.name
        clean_nb(nb, allowed_metadata_keys=cfg.get('allowed_metadata_keys') or [],
                 allowed_cell_metadata_keys=cfg.get('allowed_cell_metadata_keys') or [], clean_ids=cfg.clean_ids)
        assert nb['metadata']['kernelspec']['name'] == 'asr-kd', p.name

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _api(base, token, path, method='GET', body=None):
    req = urllib.request.Request(f'{base}{path}', method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={'Authorization': f'token {token}', 'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=60) as r:
        data = r.read()
    return json.loads(data) if data else None

@pytest.fixture
def lab(tmp_path):
    "JupyterLab started by `asr-kd lab`'s command on a free local port, over a copy of the project's config and one chapter."
    from asr_kd_nb.pipeline import lab_command
    proj = tmp_path/'proj'; (proj/'nbs').mkdir(parents=True)
    shutil.copy(ROOT/'pyproject.toml', proj/'pyproject.toml')
    shutil.copy(NBS/'04_conformer.ipynb', proj/'nbs'/'04_conformer.ipynb')
    port, token, runtime = _free_port(), 'workbench-test-token', tmp_path/'runtime'
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': str(runtime), 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    cmd = lab_command(proj/'nbs', port, ['--no-browser', f'--IdentityProvider.token={token}', '--ServerApp.ip=127.0.0.1'])
    log = open(tmp_path/'lab.log', 'w')
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)   # cwd outside the project
    base = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            if proc.poll() is not None: break
            try: _api(base, token, '/api/status'); break
            except OSError: time.sleep(0.5)
        else: pytest.fail('JupyterLab did not answer within 60 s')
        assert proc.poll() is None, (tmp_path/'lab.log').read_text()[-3000:]
        yield {'base': base, 'token': token, 'proj': proj, 'runtime': runtime, 'log': tmp_path/'lab.log'}
    finally:
        proc.terminate()
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()

def test_lab_saves_a_chapter_clean_and_runs_its_cells_on_the_project_kernel(lab):
    base, token, nb_file = lab['base'], lab['token'], lab['proj']/'nbs'/'04_conformer.ipynb'
    original = nb_file.read_bytes()
    model = _api(base, token, '/api/contents/04_conformer.ipynb?content=1')
    content = model['content']
    assert content['metadata']['kernelspec']['name'] == 'asr-kd'
    # what Lab does to an opened, unedited chapter before saving it: its kernel's display name, language_info, cell state
    content['metadata']['kernelspec']['display_name'] = 'Python (asr-kd)'
    content['metadata']['language_info'] = {'name': 'python', 'version': sys.version.split()[0], 'file_extension': '.py'}
    content['cells'][1]['metadata']['collapsed'] = False
    _api(base, token, '/api/contents/04_conformer.ipynb', 'PUT', {'type': 'notebook', 'format': 'json', 'content': content})
    assert nb_file.read_bytes() == original, 'saving an unedited chapter in Lab changed the file (not clean)'

    sess = _api(base, token, '/api/sessions', 'POST', {'path': '04_conformer.ipynb', 'type': 'notebook', 'name': '',
                                                      'kernel': {'name': content['metadata']['kernelspec']['name']}})
    assert sess['kernel']['name'] == 'asr-kd'
    from jupyter_client import BlockingKernelClient
    cf = lab['runtime']/f"kernel-{sess['kernel']['id']}.json"
    for _ in range(60):
        if cf.exists(): break
        time.sleep(0.5)
    kc = BlockingKernelClient(connection_file=str(cf)); kc.load_connection_file(); kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        out = []
        hook = lambda m: out.append(m['content'].get('text', '')) if m['msg_type'] == 'stream' else None
        r = kc.execute_interactive('import sys; print(sys.prefix)', timeout=60, output_hook=hook)
        assert r['content']['status'] == 'ok'
        assert os.path.realpath(out[-1].strip()) == os.path.realpath(sys.prefix), out   # the project's environment
        cells = {c['id']: ''.join(c['source']) for c in content['cells']}
        for cid in ('c001', 'c002', 'c005', 'c007', 'c008'):   # imports, test helpers, two exported cells and their test
            r = kc.execute_interactive(cells[cid], timeout=120, output_hook=lambda m: None)
            assert r['content']['status'] == 'ok', (cid, r['content'].get('ename'), r['content'].get('evalue'))
    finally:
        kc.stop_channels()
        _api(base, token, f"/api/sessions/{sess['id']}", 'DELETE')

def test_stage_notebook_stops_clearly_without_a_run_dir(tmp_path):
    "Run All in Lab with run_dir = None: the first run cell says what to do (no TypeError deep in pathlib)."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(str(NBS/'02_splits.ipynb'), as_version=4)
    i = next(k for k, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
    nb.cells = nb.cells[:2] + nb.cells[i:i + 2]     # imports, helpers, `run_dir = None`, the guard
    with pytest.raises(CellExecutionError, match='set run_dir to a run directory made by `asr-kd run`'):
        NotebookClient(nb, kernel_name='asr-kd', resources={'metadata': {'path': str(tmp_path)}}, timeout=300).execute()

def test_transcribe_with_the_student_a_smoke_run_kept(smoke_run, tmp_path):
    d = Path(smoke_run['dir'])
    base = json.loads((d/'kd'/'baseline.json').read_text())
    assert 0 <= base['wer'] and set(base['wers']) == set(base['cers'])
    student = d/base['student_dir']
    assert (student/'student.json').is_file() and (student/'model.safetensors').is_file()
    clip = json.loads((d/'corpus'/'manifest.jsonl').read_text().splitlines()[0])
    wav = tmp_path/'clip.wav'; shutil.copy(d/'corpus'/clip['audio_filepath'] if not Path(clip['audio_filepath']).is_absolute()
                                           else clip['audio_filepath'], wav)
    flac = tmp_path/'clip 8k.flac'
    w, sr = sf.read(wav, dtype='float32')
    sf.write(flac, np.stack([w[::2], w[::2]], 1), sr // 2)      # another rate, stereo, flac
    moved = tmp_path/'kept'; shutil.copytree(student, moved)      # a student directory works anywhere, without its run
    r = asr_kd('transcribe', '--model', moved, wav, flac, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert [l.split('\t')[0] for l in lines] == [str(wav), str(flac)], r.stdout
    from asr_kd_nb.conformer import transcribe_files
    assert lines[0].split('\t', 1)[1] == transcribe_files(moved, [wav])[0]
    bad = asr_kd('transcribe', '--model', tmp_path, wav, timeout=300)
    assert bad.returncode == 2 and 'is not a saved student' in bad.stderr

def test_compare_prints_two_runs_side_by_side(smoke_run, tmp_path):
    d = Path(smoke_run['dir'])
    other = tmp_path/'other'
    shutil.copytree(d, other, ignore=shutil.ignore_patterns('cache', 'corpus', 'notebooks', 'clustering'))
    cfg = json.loads((other/'config.json').read_text()); cfg['seed'] += 1
    (other/'config.json').write_text(json.dumps(cfg))
    base = json.loads((other/'kd'/'baseline.json').read_text()); base['gmean'] = 0.123456
    (other/'kd'/'baseline.json').write_text(json.dumps(base))
    r = asr_kd('compare', d, other, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].split()[-2:] == [d.name, 'other'], lines[0]
    row = next(l for l in lines if l.startswith('student CER (baseline)'))
    assert row.split()[-1] == '0.1235' and row.split()[-2] == f"{json.loads((d/'kd'/'baseline.json').read_text())['gmean']:.4g}"
    assert any(l.startswith('student WER (baseline)') for l in lines)
    assert any(l.startswith('seed') for l in lines[lines.index('config differences:'):]), r.stdout

def test_run_console_is_quiet_and_stages_report_progress(smoke_run):
    d = Path(smoke_run['dir'])
    err = smoke_run['first'].stderr
    assert 'INFO papermill' not in err and 'Executing notebook with kernel' not in err, err[-3000:]
    assert 'Kernel is running over TCP' not in err, err[-3000:]
    teacher = [json.loads(l) for l in (d/'notebooks'/'03_teacher.progress.jsonl').read_text().splitlines()]
    cache = [r for r in teacher if r['task'] == 'emission cache']
    assert cache and cache[-1]['done'] == cache[-1]['total'] > 0
    kd = [json.loads(l) for l in (d/'notebooks'/'05_kd.progress.jsonl').read_text().splitlines()]
    assert any(r['task'].startswith('KD seed') and r['done'] == r['total'] for r in kd)

def test_executed_notebooks_have_no_traceback_or_tqdm_warning(smoke_run):
    "What a reader opens is the record of a run: no (test) tracebacks, no TqdmWarning (ipywidgets renders the bars)."
    d = Path(smoke_run['dir'])
    bad = {}
    for p in sorted((d/'notebooks').glob('*.ipynb')):
        nb = json.loads(p.read_text(encoding='utf-8'))
        for c in nb['cells']:
            for o in c.get('outputs', []):
                text = json.dumps(o, ensure_ascii=False)
                found = [w for w in ('Traceback', 'TqdmWarning') if w in text] + (['error output'] if o.get('output_type') == 'error' else [])
                if found: bad.setdefault(p.name, set()).update(found)
    assert not bad, f'executed notebooks with traceback text or TqdmWarning: {bad}'
