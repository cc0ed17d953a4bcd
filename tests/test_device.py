"""Device plumbing on a machine without a GPU: `device='cuda'` is refused before any stage runs, and every place that computes
takes the device it is given (asked for CUDA here, it fails at its first allocation instead of quietly running on the CPU)."""
import json, sys
from pathlib import Path
import numpy as np, pytest, torch
from conftest import asr_kd

sys.path.insert(0, str(Path(__file__).parent))
from test_kd import ToyCache, HP   # noqa: E402  (the KD tests' in-memory cache)
from asr_kd_nb.config import check_device
from asr_kd_nb.kd import KDConfig, train_student, evaluate_fold
from asr_kd_nb.teacher import Teacher, ConformerCTC

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
CUDA_ERRORS = (RuntimeError, AssertionError)   # "Found no NVIDIA driver" (CUDA build) / "Torch not compiled with CUDA" (CPU build)


@no_cuda
def test_run_with_cuda_without_cuda_exits_2_before_any_stage(tmp_path):
    cfg = tmp_path/'cfg.json'; cfg.write_text(json.dumps({'preset': 'smoke', 'device': 'cuda'}))
    run_dir = tmp_path/'run'
    r = asr_kd('run', '--config', cfg, '--run-dir', run_dir, '--no-progress', timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert 'no CUDA device' in r.stderr and "device='cuda'" in r.stderr
    assert not run_dir.exists()                      # not even config.json: nothing ran


@no_cuda
def test_check_device():
    assert check_device('cpu') == 'cpu' and check_device('auto') == 'cpu'
    for bad, msg in (('cuda', 'no CUDA device'), ('cuda:1', 'no CUDA device'), ('tpu', 'unknown device')):
        with pytest.raises(ValueError, match=msg): check_device(bad)


@pytest.fixture(scope='module')
def toy(): return ToyCache(n=12)


@no_cuda
def test_student_training_takes_its_device(toy):
    kd = KDConfig(steps=2)
    r = train_student(HP, toy, toy.ids[:8], kd, 0, device='cpu')     # the same call on the CPU works ...
    assert r.steps == 2 and next(r.student.parameters()).device.type == 'cpu'
    with pytest.raises(CUDA_ERRORS): train_student(HP, toy, toy.ids[:8], kd, 0, device='cuda')   # ... on CUDA it does not fall back
    with pytest.raises(CUDA_ERRORS): evaluate_fold(r.student, toy, toy.ids[8:], 4, device='cuda')


@no_cuda
def test_teacher_pass_takes_its_device():
    m = ConformerCTC(35, n_mels=20, hidden=32, num_layers=1, num_heads=2, ffn_dim=64)
    waves = [np.random.default_rng(i).standard_normal(6000).astype(np.float32) * 0.1 for i in range(2)]
    lp, n = Teacher(m, list('x' * 35), 0, {}, 'cpu')(waves)
    assert lp.shape[0] == 2 and lp.device.type == 'cpu' and torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[:2]), atol=1e-5)
    with pytest.raises(CUDA_ERRORS): Teacher(m, list('x' * 35), 0, {}, 'cuda')


@no_cuda
def test_benchmarks_refuse_a_missing_gpu(tmp_path):
    from asr_kd_nb.bench_trials import TrialPool
    with pytest.raises(ValueError, match='no CUDA device'): TrialPool(tmp_path, 'cuda', 1)


COMPUTE_OPS = ('convolution', 'mm', 'addmm', 'bmm', 'baddbmm', 'linear', '_log_softmax', '_softmax', 'native_layer_norm',
               'batch_norm', 'gelu', 'silu', 'glu', 'sigmoid')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_training_on_cuda_computes_on_cuda(toy):
    "On a GPU machine: every compute op (convolutions, matrix products, norms, activations) of training and evaluation runs on CUDA."
    from torch.utils._python_dispatch import TorchDispatchMode
    seen = set()
    class Devices(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func).split('.')[1] if str(func).startswith('aten.') else str(func)
            if any(name == op or name.startswith(op + '_') or name.endswith(op) for op in COMPUTE_OPS):
                for a in torch.utils._pytree.tree_leaves((args, kwargs or {})):
                    if isinstance(a, torch.Tensor) and a.dim() > 0: seen.add((name, a.device.type))
            return func(*args, **(kwargs or {}))
    r = train_student(HP, toy, toy.ids[:8], KDConfig(steps=1), 0, device='cuda')
    with Devices():
        train_student(HP, toy, toy.ids[:8], KDConfig(steps=2), 0, device='cuda', student=r.student, optimizer=r.optimizer)
        evaluate_fold(r.student, toy, toy.ids[8:], 4, device='cuda')
    assert seen and {d for _, d in seen} == {'cuda'}, sorted(seen)


def test_bench_command_needs_a_run_dir():
    r = asr_kd('bench', 'kd', timeout=300)
    assert r.returncode == 2 and 'needs --run-dir' in r.stderr, r.stderr[-2000:]
