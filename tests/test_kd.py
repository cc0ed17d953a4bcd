"KD loss, training loop and protocols on a small in-memory cache (test-only stand-in for the teacher stage's cache)."
from dataclasses import replace
import numpy as np, pytest, torch
import torch.nn.functional as F
from asr_kd_nb.conformer import StudentHParams, N_MFCC
from asr_kd_nb.kd import (KDConfig, TrainingDiverged, kd_loss, valid_mask, train_student, run_protocol, evaluate_fold,
                          length_buckets, geometric_mean)
from asr_kd_nb.teacher import ctc_greedy_decode

torch.set_num_threads(1)


class ToyCache:
    "Test-only object with the `EmissionCache` interface: a fixed random linear 'teacher' over random MFCCs."
    def __init__(self, n=40, seed=0, vocab=('', ' ', 'а', 'б', 'в', 'г'), nan_teacher=False):
        rng = np.random.default_rng(seed)
        self.vocab, self.blank_id = list(vocab), 0
        W = rng.normal(0, 1.5, (N_MFCC, len(vocab))).astype(np.float32); W[:, 0] += 0.5
        self.ids, self._d = [f'u{i:03d}' for i in range(n)], {}
        for i in self.ids:
            f = rng.normal(0, 1, (int(rng.integers(12, 40)), N_MFCC)).astype(np.float32)
            lp = torch.from_numpy(f @ W).log_softmax(-1).numpy().astype(np.float16)
            if nan_teacher: lp[:] = np.nan
            text = ctc_greedy_decode(lp.astype(np.float32), self.vocab, 0) if not nan_teacher else 'аб'
            self._d[i] = (f, lp, text or 'а')
    def frames(self, i): return len(self._d[i][0])
    def get(self, i): return self._d[i][:2]
    def text(self, i): return self._d[i][2]


HP = StudentHParams(32, 32, 4, 1, 3, 3, 0.1, 4, 3e-3)


@pytest.fixture(scope='module')
def toy(): return ToyCache()


@pytest.fixture(scope='module')
def splits(toy): return {'test_folds': {'cluster-0': toy.ids[30:35], 'cluster-1': toy.ids[35:]}, 'train': toy.ids[:30]}


@pytest.mark.parametrize('B, T, V', [(1, 5, 3), (4, 23, 34), (3, 50, 7)])
def test_paper_loss_equals_kldivloss(B, T, V):
    g = torch.Generator().manual_seed(B * T * V)
    s, t = torch.randn(B, T, V, generator=g) * 3, torch.randn(B, T, V, generator=g).log_softmax(-1)
    lengths = torch.randint(1, T + 1, (B,), generator=g); lengths[0] = T
    m = valid_mask(lengths, T)
    ref = torch.nn.KLDivLoss(reduction='mean', log_target=True)(s[m].log_softmax(-1), t[m])
    torch.testing.assert_close(kd_loss(s, t, lengths, 'paper'), ref, rtol=1e-6, atol=1e-7)
    # the correct mode is the true per-frame KL: V times the paper's value
    torch.testing.assert_close(kd_loss(s, t, lengths, 'correct'), ref * V, rtol=1e-5, atol=1e-6)


def test_temperature_and_padding():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 8, 5, generator=g), torch.randn(2, 8, 5, generator=g).log_softmax(-1)
    lengths = torch.tensor([8, 3]); m = valid_mask(lengths, 8)
    T = 2.5
    ls, lt = (s[m] / T).log_softmax(-1), (t[m] / T).log_softmax(-1)
    expected = (lt.exp() * (lt - ls)).sum(-1).mean() * T ** 2
    torch.testing.assert_close(kd_loss(s, t, lengths, temperature=T), expected)
    s2 = s.clone(); s2[1, 3:] = float('nan')          # padded frames are never read
    torch.testing.assert_close(kd_loss(s2, t, lengths, temperature=T), expected)


def test_ctc_term():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 10, 5, generator=g), torch.randn(2, 10, 5, generator=g).log_softmax(-1)
    lengths, tg, tl = torch.tensor([10, 7]), torch.tensor([1, 2, 3, 4, 4]), torch.tensor([3, 2])
    ctc = F.ctc_loss(s.log_softmax(-1).transpose(0, 1), tg, lengths, tl, reduction='sum') / lengths.sum()
    mixed = kd_loss(s, t, lengths, ctc_weight=0.3, targets=tg, target_lengths=tl)
    torch.testing.assert_close(mixed, 0.7 * kd_loss(s, t, lengths) + 0.3 * ctc)
    with pytest.raises(ValueError, match='needs targets'): kd_loss(s, t, lengths, ctc_weight=0.3)


def test_independent_protocol_is_deterministic(toy, splits):
    kd = KDConfig(budget="steps", steps=12, seeds=[3, 7])
    a = run_protocol(HP, toy, splits, kd, splits['train'])
    b = run_protocol(HP, toy, splits, kd, splits['train'])
    assert a['cers'] == b['cers'] and a['gmean'] == b['gmean']       # bit for bit on the CPU
    assert sorted(a['cers']) == ['seed-3/cluster-0', 'seed-3/cluster-1', 'seed-7/cluster-0', 'seed-7/cluster-1']
    assert a['steps'] == 24 and a['wall_s'] > 0
    assert a['gmean'] == pytest.approx(geometric_mean(a['cers'].values()))
    c = run_protocol(HP, toy, splits, replace(kd, seeds=[4, 8]), splits['train'])
    assert c['cers'] != a['cers']                                      # the seed really changes the run


def test_seed_controls_shuffling_and_init(toy):
    frames = [toy.frames(i) for i in toy.ids]
    assert length_buckets(frames, 4, torch.Generator().manual_seed(1)) == length_buckets(frames, 4, torch.Generator().manual_seed(1))
    assert length_buckets(frames, 4, torch.Generator().manual_seed(1)) != length_buckets(frames, 4, torch.Generator().manual_seed(2))
    torch.manual_seed(123); r1 = train_student(HP, toy, toy.ids[:30], KDConfig(steps=8), seed=5)
    torch.manual_seed(999); r2 = train_student(HP, toy, toy.ids[:30], KDConfig(steps=8), seed=5)
    assert r1.losses == r2.losses                                      # the global seed plays no part


def test_training_learns(toy):
    r = train_student(HP, toy, toy.ids[:30], KDConfig(steps=50), seed=0)
    assert np.mean(r.losses[-10:]) < 0.7 * np.mean(r.losses[:5])
    c, hyps = evaluate_fold(r.student, toy, toy.ids[30:])
    assert 0 <= c < 1 and len(hyps) == 10


def test_nan_loss_raises_training_diverged():
    bad = ToyCache(n=12, nan_teacher=True)
    with pytest.raises(TrainingDiverged, match='KD loss is nan at step 1'):
        train_student(HP, bad, bad.ids, KDConfig(steps=5), seed=0)
    assert issubclass(TrainingDiverged, RuntimeError)


def test_report_called_per_seed_and_pruning_propagates(toy, splits):
    seen = []
    res = run_protocol(HP, toy, splits, KDConfig(budget="steps", steps=5, seeds=[1, 2, 3]), splits['train'], report=lambda i, v, folds: seen.append((i, v)))
    assert [i for i, _ in seen] == [0, 1, 2] and seen[-1][1] == pytest.approx(res['gmean'])

    class Pruned(Exception): pass
    calls = []
    def prune(i, v, folds): calls.append(i); raise Pruned()
    with pytest.raises(Pruned):
        run_protocol(HP, toy, splits, KDConfig(budget="steps", steps=5, seeds=[1, 2, 3]), splits['train'], report=prune)
    assert calls == [0]                                               # stopped after the first seed


def test_paper_protocol(toy, splits):
    hist = []
    res = run_protocol(HP, toy, splits, KDConfig(budget="steps", steps=6, seeds=[42, 24], protocol='paper'), splits['train'], history=hist)
    assert list(res['cers']) == ['seed-42/cluster-0', 'seed-24/cluster-1']   # seed k paired with fold k
    assert res['steps'] == 12 and hist[0]['student'] is hist[1]['student']    # one student trained on across folds


def test_config_validation():
    with pytest.raises(ValueError, match="kd.protocol='x'"): KDConfig(protocol='x').validate()
    with pytest.raises(ValueError, match='temperature must be 1'): KDConfig(loss='paper', temperature=2).validate()
    with pytest.raises(ValueError, match='kd.seeds is empty'): KDConfig(seeds=[]).validate()

def test_epoch_budget_steps_follow_the_data(toy):
    "Epochs -> steps: half the training ids give half the steps; a larger batch fewer; every utterance seen `epochs` times."
    from asr_kd_nb.kd import epoch_steps
    splits = {'test_folds': {'c0': toy.ids[30:35]}}
    kd = KDConfig(epochs=2.0, seeds=[1])
    full, half = (run_protocol(HP, toy, splits, kd, toy.ids[:n]) for n in (30, 15))
    assert (full['steps'], half['steps']) == (2 * epoch_steps(30, HP.minibatch_size), 2 * epoch_steps(15, HP.minibatch_size))
    assert (full['utterances'], half['utterances']) == (60, 30) and full['cpu_s'] > 0
    big = run_protocol(replace(HP, minibatch_size=2 * HP.minibatch_size), toy, splits, kd, toy.ids[:30])
    assert big['steps'] < full['steps'] and big['utterances'] == 60

def test_paper_preset_is_the_original_objective():
    from asr_kd_nb.config import section_preset
    kd = section_preset(KDConfig, 'paper').validate()
    assert (kd.loss, kd.protocol, kd.budget, kd.epochs, kd.seeds) == ('paper', 'paper', 'epochs', 1.0, [42, 24, 0, 98])
    assert section_preset(KDConfig, 'default').loss == 'correct' and section_preset(KDConfig, 'default').budget == 'epochs'


def test_selection_folds_and_reported_folds(toy, splits):
    "The objective (and every report a pruner sees) reads `folds`; `also_score` folds are scored once per student beside it."
    dev = {'cluster-2': toy.ids[25:30]}
    seen = []
    res = run_protocol(HP, toy, splits, KDConfig(budget='steps', steps=5, seeds=[1, 2]), toy.ids[:25], folds=dev,
                       also_score={'test': splits['test_folds']}, report=lambda i, v, folds: seen.append(sorted(folds)))
    assert sorted(res['cers']) == ['seed-1/cluster-2', 'seed-2/cluster-2'] and seen == [['cluster-2'], ['cluster-2']]
    assert sorted(res['test_cers']) == [f'seed-{s}/cluster-{c}' for s in (1, 2) for c in (0, 1)]
    assert res['test_gmean'] == pytest.approx(geometric_mean(res['test_cers'].values()))
    plain = run_protocol(HP, toy, splits, KDConfig(budget='steps', steps=5, seeds=[1, 2]), toy.ids[:25])
    assert plain['cers'] == res['test_cers']          # the same students: the test CER does not depend on what is selected on
