"""The `paper` preset end to end on local copies, as a user without hub access runs it (`--config local.json`): a small
Golos-shaped Hugging Face dataset (`audio`, `transcription`; splits train, validation, test), a tiny x-vector model and a tiny
wav2vec2 CTC teacher saved with `save_pretrained`, with and without an out-of-domain set. Overrides keep each run small (a few
dozen one-second clips, k-means with four clusters, two trials per search); everything else is the paper preset. Without an
out-of-domain set the run must go through every stage and say that the set is absent (it used to crash in `run_card`); with
one, the stages that read it (corpus to teacher) run and the run card carries its CER."""
import io, json, os
from pathlib import Path
import numpy as np, pytest, soundfile as sf
from conftest import asr_kd
from test_clustering import tiny_xvector_model

SR = 16000
WORDS = ['да', 'нет', 'привет', 'мир', 'один', 'два', 'три', 'дом', 'кот', 'сад']


def wav_bytes(x):
    b = io.BytesIO(); sf.write(b, x, SR, format='WAV'); return b.getvalue()


def golos_like(path, n, seed, speakers=4):
    "A hub-snapshot-shaped dataset folder (data/SPLIT-00000-of-00001.parquet) of `n` clips, `speakers` voices told by pitch."
    datasets = pytest.importorskip('datasets')
    rng = np.random.default_rng(seed); (path/'data').mkdir(parents=True)
    rows = []
    for i in range(n):
        f0, sec = 120 + 60 * (i % speakers), 1.0 + 0.25 * rng.random()
        t = np.arange(int(sec * SR)) / SR
        x = 0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
        rows.append(({'bytes': wav_bytes(x.astype('float32')), 'path': f'{i}.wav'}, ' '.join(rng.choice(WORDS, 2))))
    cut = {'train': rows[: n // 2], 'validation': rows[n // 2: 3 * n // 4], 'test': rows[3 * n // 4:]}
    for split, rs in cut.items():
        if not rs: continue
        ds = datasets.Dataset.from_dict({'audio': [a for a, _ in rs], 'transcription': [t for _, t in rs]})
        ds.cast_column('audio', datasets.Audio(sampling_rate=SR)).to_parquet(str(path/'data'/f'{split}-00000-of-00001.parquet'))
    return str(path)


@pytest.fixture(scope='module')
def local_sources(tmp_path_factory):
    "The folders a local.json points at: dataset, out-of-domain dataset, x-vector model, teacher."
    from asr_kd_nb.teacher import make_w2v2
    d = tmp_path_factory.mktemp('paper-sources')
    model, proc = make_w2v2(); model.save_pretrained(d/'teacher'); proc.save_pretrained(d/'teacher')
    return {'golos': golos_like(d/'golos', 48, 0), 'ood': golos_like(d/'voxforge', 8, 1, speakers=2),
            'xvector': tiny_xvector_model(d/'xvector'), 'teacher': str(d/'teacher')}


def small_paper_config(src, ood:bool) -> dict:
    "local.json of the README's paper setup with overrides that keep the run small (what the test adds, key by key)."
    from asr_kd_nb.config import section_preset
    from asr_kd_nb.search import SearchConfig
    return {'preset': 'paper', 'hub': 'offline', 'device': 'cpu',
            'corpus': {'hf_dataset': src['golos'], 'ood_dataset': src['ood'] if ood else ''},
            'clustering': {'xvector_model': src['xvector'], 'algorithm': 'kmeans', 'k': 4, 'kmeans_k': [4], 'birch_k': [4],
                           'agglomerative_k': [4]},
            'splits': {'test_clusters': [0, 1], 'train_clusters': [2, 3], 'n_test_folds': 2, 'min_fold_size': 2,
                       'min_fraction_size': 2, 'fractions': [1.0, 0.5]},
            'teacher': {'source': src['teacher']},
            'conformer': {'width_divisor': 8, 'layer_divisor': 4.0},
            'kd': {'seeds': [42, 24], 'baseline_steps': 20, 'steps': 20, 'threads': 1},
            'search': {'space': section_preset(SearchConfig, 'smoke').space, 'n_trials': 2, 'replicates': 2, 'sampler_startup_trials': 1},
            'datasize': {'panel_size': 1, 'checkpoints': [0.5, 1.0], 'table_seeds': [0, 1]},
            'verdicts': {'primary_n': 2, 'n_values': [2], 'resamples': 100, 'simulations': 50},
            'strategies': {'budget_trials': 2.0, 'bracket': 3, 'grid': 2, 'pareto_trials': 1, 'bootstrap': 100}}


@pytest.mark.parametrize('ood', [False, True], ids=['no-ood', 'ood'])
def test_paper_preset_end_to_end_on_local_copies(tmp_path, local_sources, ood):
    cfg = tmp_path/'local.json'; cfg.write_text(json.dumps(small_paper_config(local_sources, ood)))
    run = tmp_path/'run'
    upto = ['--stages', '00_corpus', '01_clustering', '02_splits', '03_teacher'] if ood else []   # (the later stages do not read it)
    r = asr_kd('run', '--config', cfg, '--run-dir', run, '--no-progress', *upto, timeout=3600)
    assert r.returncode == 0, r.stderr[-6000:]
    report = json.loads((run/'corpus'/'report.json').read_text())
    if ood:
        from asr_kd_nb.report import run_card
        card = run_card(run)
        # the paper reads the out-of-domain set's split 'test' (corpus.ood_splits): the last quarter of its 8 clips
        assert report['ood_stats']['utterances'] == 2 and card['corpus']['ood_utterances'] == 2
        assert card['teacher']['ood_cer'] is not None and json.loads((run/'teacher'/'teacher.json').read_text())['ood_utterances'] == 2
        return
    assert 'HTML report (open in a browser)' in r.stderr and (run/'report'/'html'/'index.html').exists()
    done = json.loads((run/'stages.json').read_text())
    assert {'00_corpus', '03_teacher', '05_kd', '07_datasize', '10_strategies'} <= set(done), sorted(done)
    summary = json.loads((run/'report'/'summary.json').read_text())
    card = summary['card']
    html = (run/'report'/'html'/'index.html').read_text(encoding='utf-8')
    assert report['ood_stats'] is None and card['corpus']['ood_utterances'] == 0 and card['teacher']['ood_cer'] is None
    assert 'no out-of-domain set' in r.stderr and 'no out-of-domain set' in html       # said, in the headline and the HTML
    from asr_kd_nb.pipeline import publish_results, run_headline
    dest = publish_results(run, tmp_path/'images')                 # what the README is made from copes as well
    assert json.loads((dest/'results.json').read_text())['preset'] == 'paper'
    assert run_headline(run)['preset'] == 'paper'


def test_hf_out_of_domain_ids_do_not_collide_with_the_main_sets(tmp_path):
    "Golos and VoxForge both have a split 'test': the out-of-domain set's ids (and audio files) must stay apart from the main set's."
    from asr_kd_nb.corpus import CorpusConfig, build_corpus, read_manifest
    cfg = CorpusConfig(source='hf', hf_dataset=golos_like(tmp_path/'golos', 8, 0), ood_dataset=golos_like(tmp_path/'vox', 4, 1),
                       ood_splits=['train', 'test'])
    build_corpus(cfg, tmp_path/'run')
    main, ood = (read_manifest(tmp_path/'run'/'corpus'/f) for f in ('manifest.jsonl', 'ood_manifest.jsonl'))
    assert len(main) == 8 and len(ood) == 3                          # splits train (2) and test (1) of the 4 clips
    assert not {u.id for u in main} & {u.id for u in ood} and all(u.id.startswith('ood-') for u in ood)
    assert len({u.audio_filepath for u in main + ood}) == 11          # no audio file written twice
