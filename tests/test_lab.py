"""`asr-kd lab` hands JupyterLab's own options on: `asr-kd lab --no-browser --port P` serves JupyterLab on port P, and the
process a user started is JupyterLab itself, so stopping it stops the server."""
import json, os, socket, subprocess, sys, time, urllib.request
from conftest import ROOT, ASR_KD


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_lab_takes_jupyterlab_options(tmp_path):
    port, runtime = _free_port(), tmp_path/'runtime'
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': str(runtime),
           'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    log = open(tmp_path/'lab.log', 'w')
    proc = subprocess.Popen([*ASR_KD, 'lab', '--no-browser', '--port', str(port), '--ip', '127.0.0.1'],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        answer, deadline = None, time.time() + 120
        while answer is None and time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/api', timeout=5) as r: answer = json.loads(r.read())
            except OSError: time.sleep(0.5)
        assert answer is not None, f'no JupyterLab on port {port} (exit {proc.poll()}):\n' + (tmp_path/'lab.log').read_text()[-3000:]
        assert 'version' in answer, answer
        servers = [json.loads(p.read_text()) for p in runtime.glob('jpserver-*.json')]
        assert [(s['port'], s['pid']) for s in servers] == [(port, proc.pid)], servers   # the started process is the server
        assert os.path.realpath(servers[0]['root_dir']) == os.path.realpath(ROOT/'nbs')
    finally:
        proc.terminate()
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()
    assert proc.returncode is not None
    with socket.socket() as s:   # nothing listens on the port any more (SO_REUSEADDR: a closed connection's TIME_WAIT is no listener)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', port)); s.listen()
