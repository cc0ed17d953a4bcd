"Student model: hyperparameter validation, scaling, deterministic initialisation, padding invariance."
import itertools
import pytest, torch
from asr_kd_nb.conformer import (StudentHParams, InvalidHParams, PAPER_BEST, build_student, count_parameters, scale_hparams,
                                 padding_invariance, unmasked_copy, N_MFCC)

torch.set_num_threads(1)


def _warm(model, g):
    "Training-mode passes with shifted inputs, so BatchNorm running statistics are far from 0/1."
    model.train()
    with torch.no_grad():
        for _ in range(4): model(2 + 3 * torch.randn(4, 50, N_MFCC, generator=g), torch.tensor([50, 37, 21, 9]))
    return model


@pytest.mark.parametrize('hp', [StudentHParams(32, 16, 4, 2, 5, 4, 0.1, 4, 1e-3),      # even front-end kernel
                                StudentHParams(48, 32, 2, 1, 11, 3, 0.3, 4, 1e-3),
                                scale_hparams(PAPER_BEST['0.7'], 'smoke')])
def test_padding_invariance(hp):
    g = torch.Generator().manual_seed(0)
    m = _warm(build_student(hp, 20, g), g)
    # the same clip alone vs. padded next to a clip three times longer, in eval mode
    assert padding_invariance(m, 40, g) <= 1e-4
    # the check is sensitive: the same weights without the masking fixes (the paper's student) leak padding
    assert padding_invariance(unmasked_copy(m), 40, g) > 1e-3


def test_padding_invariance_by_hand():
    g = torch.Generator().manual_seed(1)
    m = _warm(build_student(StudentHParams(32, 32, 4, 2, 7, 5, 0.2, 4, 1e-3), 12, g), g).eval()
    short, long = torch.randn(25, N_MFCC, generator=g), torch.randn(75, N_MFCC, generator=g)
    batch = torch.zeros(2, 75, N_MFCC); batch[0, :25] = short; batch[1] = long
    with torch.no_grad():
        alone = m(short[None], torch.tensor([25]))[0]
        padded = m(batch, torch.tensor([25, 75]))[0, :25]
        alone_long = m(long[None], torch.tensor([75]))[0]
        batched_long = m(batch, torch.tensor([25, 75]))[1]
    assert (alone - padded).abs().max() <= 1e-4
    assert (alone_long - batched_long).abs().max() <= 1e-4


@pytest.mark.parametrize('change, msg', [
    (dict(hidden_layer_size=100, num_heads=8), 'num_heads=8 does not divide hidden_layer_size=100'),
    (dict(depthwise_conv_kernel_size=10), 'depthwise_conv_kernel_size=10 must be odd'),
    (dict(dropout=1.0), 'dropout=1.0 must be in [0, 1)'),
    (dict(dropout=-0.1), 'dropout=-0.1 must be in [0, 1)'),
    (dict(ffn_dim=0), 'ffn_dim=0 must be a positive integer'),
    (dict(minibatch_size=-4), 'minibatch_size=-4 must be a positive integer'),
    (dict(kernel_size=3.5), 'kernel_size=3.5 must be an integer'),
    (dict(learning_rate=0.0), 'learning_rate=0.0 must be a finite number > 0'),
    (dict(learning_rate=float('nan')), 'learning_rate=nan must be a finite number > 0'),
])
def test_invalid_hparams_raise(change, msg):
    hp = StudentHParams(**{**StudentHParams().__dict__, **change})
    with pytest.raises(InvalidHParams, match=msg.replace('[', r'\[').replace(')', r'\)').replace('(', r'\(')):
        hp.validate()
    with pytest.raises(ValueError):   # InvalidHParams is a ValueError
        build_student(hp, 10)


def test_paper_best_and_from_dict():
    for hp in PAPER_BEST.values(): hp.validate()
    assert PAPER_BEST['1.0'] == StudentHParams.from_dict(PAPER_BEST['1.0'].__dict__)
    with pytest.raises(InvalidHParams, match='missing'): StudentHParams.from_dict({'hidden_layer_size': 64})


def test_scaled_space_is_valid_and_monotone():
    "Every point of the paper's search space scales to a valid student, preserving order in width and depth."
    for preset in ('smoke', 'default'):
        prev = None
        for h, heads, layers in itertools.product([64, 128, 256, 512], [2, 4, 8], [4, 5, 6]):
            hp = scale_hparams(StudentHParams(h, 64, heads, layers, 5, 3, 0.2, 8, 1e-3), preset)
            assert hp.hidden_layer_size % hp.num_heads == 0
        widths = [scale_hparams(StudentHParams(h, 64, 8, 4, 5, 3, 0.2, 8, 1e-3), preset).hidden_layer_size for h in [64, 128, 256, 512]]
        depths = [scale_hparams(StudentHParams(64, 64, 8, n, 5, 3, 0.2, 8, 1e-3), preset).num_layers for n in [4, 5, 6]]
        assert widths == sorted(widths) and depths == sorted(depths)
    assert scale_hparams(PAPER_BEST['1.0'], 'paper') == PAPER_BEST['1.0']


def test_generator_controls_initialisation():
    hp = StudentHParams(32, 16, 4, 1, 3, 3, 0.1, 4, 1e-3)
    state = torch.random.get_rng_state()
    a = build_student(hp, 10, torch.Generator().manual_seed(5))
    b = build_student(hp, 10, torch.Generator().manual_seed(5))
    c = build_student(hp, 10, torch.Generator().manual_seed(6))
    assert torch.equal(state, torch.random.get_rng_state())     # the global random state is untouched
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.head.weight, c.head.weight)
    a.head.requires_grad_(False)                                 # frozen parameters are not trainable ones
    assert count_parameters(a) == sum(p.numel() for p in a.parameters()) - 10 * 32 - 10
    a.head.requires_grad_(True)
    out = a(torch.randn(3, 17, N_MFCC), torch.tensor([17, 9, 1]))
    assert out.shape == (3, 17, 10) and torch.isfinite(out).all()
