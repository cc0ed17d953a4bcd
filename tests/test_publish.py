"Publishing a run into nbs/images: a smoke run is refused unless forced; the provenance names the run dir as typed."
import json
import pytest
from asr_kd_nb.pipeline import publish_results
from conftest import asr_kd

def test_publish_refuses_a_smoke_run(smoke_run, tmp_path):
    r = asr_kd('publish', '--run-dir', smoke_run['dir'])
    assert r.returncode == 2 and 'smoke run' in r.stderr and '--force' in r.stderr, r.stderr[-2000:]
    dest = publish_results(smoke_run['dir'], dest=tmp_path/'images', force=True)
    res = json.loads((dest/'results.json').read_text())
    assert res['preset'] == 'smoke' and res['command'] == f"asr-kd run --preset smoke --run-dir {smoke_run['dir']}", res['command']
    assert res['machine'] and ' cores' in res['machine']                 # where it ran: CPU model and cores
    assert res['summary']['per_fraction'] and set(res['figures']) == {p.name for p in dest.iterdir() if p.suffix == '.png'}

def test_run_prints_the_html_report(smoke_run):
    err = smoke_run['second'].stderr
    assert 'HTML report (open in a browser): ' in err and 'index.html' in err.split('HTML report (open in a browser): ')[1].split('\n')[0]
