"Splits stage: cluster-disjoint folds, nested stratified fractions, leakage, and the checks that refuse a bad split."
from pathlib import Path
import pytest
from asr_kd_nb.config import study_config, save_config, read_json
from asr_kd_nb.corpus import Utterance, write_manifest
from asr_kd_nb.clustering import write_labels, clustering_grid, ClusteringConfig
from asr_kd_nb.splits import SplitsConfig, make_splits, split_stage, check_splits


def corpus(n=300, n_speakers=10, n_sentences=None):
    "Utterances of `n_speakers` speakers; with `n_sentences`, sentences repeat across speakers."
    return [Utterance(f'u{i:04d}', f'audio/u{i:04d}.wav', f'фраза номер {i % (n_sentences or n)}', 1.5 + (i % 7) / 10,
                      f'spk{i % n_speakers}', 'embedded') for i in range(n)]


def write_run(tmp_path, utts, cluster, overrides=None, preset='smoke'):
    run = tmp_path/'run'
    save_config(study_config(preset, overrides or {}), run)
    write_manifest(utts, run/'corpus'/'manifest.jsonl')
    write_labels(run/'clustering'/'labels.csv', [u.id for u in utts], [cluster[u.id] for u in utts])
    return run


def test_split_stage_writes_the_contract(tmp_path):
    utts = corpus()
    cluster = {u.id: int(u.speaker[3:]) for u in utts}            # clusters = speakers
    run = write_run(tmp_path, utts, cluster)
    s = split_stage(run)
    on_disk = read_json(run/'splits.json')
    assert on_disk['test_folds'] == s['test_folds']
    assert on_disk == s                                            # every key as returned
    assert on_disk['subset_seeds'] == [0, 1] and list(on_disk['fractions']) == ['0', '1']   # smoke preset: two subset seeds
    assert all(list(d) == ['1.0', '0.5'] for d in on_disk['fractions'].values())
    assert len(s['test_folds']) == 2 and all(n.startswith('cluster-') for n in s['test_folds'])
    assert len(s['dev_folds']) == 1 and all(n.startswith('cluster-') for n in s['dev_folds'])
    test = {i for f in s['test_folds'].values() for i in f}
    dev = {i for f in s['dev_folds'].values() for i in f}
    assert not test & set(s['train']) and not dev & set(s['train']) and not dev & test
    for d in s['fractions'].values(): assert set(d['0.5']) <= set(d['1.0']) == set(s['train'])
    assert s['fractions']['0']['0.5'] != s['fractions']['1']['0.5']
    assert s['speaker_leakage']['share'] == 0.0 and s['speaker_leakage']['dev_share'] == 0.0
    dur = {u.id: u.duration for u in utts}
    sets = {**{f'test {n}': f for n, f in s['test_folds'].items()}, **{f'dev {n}': f for n, f in s['dev_folds'].items()}, 'train': s['train'],
            **{f'train fraction {k} seed {seed}': v for seed, d in s['fractions'].items() for k, v in d.items()}}
    assert [r['set'] for r in s['sizes']] == list(sets)
    for r in s['sizes']:                                           # sizes are the sets' own counts, minutes and speakers
        ids = sets[r['set']]
        assert (r['utterances'], r['speakers']) == (len(ids), len({cluster[i] for i in ids}))
        assert abs(r['minutes'] - sum(dur[i] for i in ids) / 60) <= 0.005 + 1e-9   # rounded to 2 decimals
    assert split_stage(run) == s                                   # seeded: the same split again


def test_default_fractions_are_nested_and_stratified(tmp_path):
    utts = corpus(1200, 12)
    cluster = {u.id: int(u.speaker[3:]) for u in utts}
    s = make_splits(utts, cluster, study_config('default').splits, seed=5)
    assert len(s['test_folds']) >= 3 and all(len(f) >= 100 for f in s['test_folds'].values())
    assert len(s['dev_folds']) >= 2 and not set(s['dev_clusters']) & (set(s['test_clusters']) | set(s['train_clusters']))
    assert len(s['subset_seeds']) >= 3
    for fr in s['fractions'].values():                              # nested and stratified within every subset seed
        assert list(fr) == ['1.0', '0.7', '0.5', '0.3']
        assert set(fr['0.3']) <= set(fr['0.5']) <= set(fr['0.7']) <= set(fr['1.0'])
        for c in s['train_clusters']:                               # every cluster keeps ~30 %
            n_c = sum(cluster[i] == c for i in fr['1.0'])
            assert abs(sum(cluster[i] == c for i in fr['0.3']) - 0.3 * n_c) <= 1
    for k in ('0.7', '0.5', '0.3'): assert len({tuple(fr[k]) for fr in s['fractions'].values()}) == len(s['subset_seeds'])
    other = make_splits(utts, cluster, study_config('default').splits, seed=6)
    assert other['fractions']['0']['0.3'] != s['fractions']['0']['0.3'] or other['test_clusters'] != s['test_clusters']


def test_text_leakage_dropped_by_default_and_kept_in_paper_mode(tmp_path):
    utts = corpus(300, 10, n_sentences=255)                         # 45 sentences are read twice, by different speakers
    cluster = {u.id: int(u.speaker[3:]) for u in utts}
    cfg = SplitsConfig(test_clusters=[0, 1], n_dev_folds=0, min_fold_size=10, min_fraction_size=10)
    s = make_splits(utts, cluster, cfg, seed=0)
    text = {u.id: u.text for u in utts}
    test_text = {text[i] for f in s['test_folds'].values() for i in f}
    assert not {text[i] for i in s['train']} & test_text
    n = s['text_leakage']['train_utterances_sharing_a_test_sentence']
    assert n > 0 and s['text_leakage']['dropped'] is True
    kept = make_splits(utts, cluster, SplitsConfig(test_clusters=[0, 1], n_dev_folds=0, min_fold_size=10, min_fraction_size=10,
                                                   drop_text_leakage=False), seed=0)
    assert len(kept['train']) == len(s['train']) + n
    assert kept['text_leakage']['train_utterances_sharing_a_test_sentence'] == n
    with_dev = make_splits(utts, cluster, SplitsConfig(test_clusters=[0, 1], n_dev_folds=2, min_fold_size=10, min_fraction_size=10), seed=0)
    dev_text = {text[i] for f in with_dev['dev_folds'].values() for i in f}
    assert with_dev['text_leakage']['train_utterances_sharing_a_dev_sentence'] > 0     # the dev folds' sentences leave training too
    assert not {text[i] for i in with_dev['train']} & (dev_text | test_text)


def test_speaker_leakage_is_measured_when_clusters_mix_speakers():
    utts = corpus(200, 4)
    cluster = {u.id: i % 5 for i, u in enumerate(utts)}             # clusters cut across speakers
    s = make_splits(utts, cluster, SplitsConfig(test_clusters=[0], min_fold_size=10, min_fraction_size=10), seed=0)
    assert s['speaker_leakage']['share'] == 1.0
    unknown = [Utterance(u.id, u.audio_filepath, u.text, u.duration, None) for u in utts]
    assert make_splits(unknown, cluster, SplitsConfig(test_clusters=[0], min_fold_size=10, min_fraction_size=10))['speaker_leakage'] is None


@pytest.mark.parametrize('cfg, message', [
    (SplitsConfig(test_clusters=[0, 42]), r'names cluster\(s\) \[42\] that do not exist'),
    (SplitsConfig(test_clusters=[1], n_dev_folds=0, min_fold_size=31), 'test fold cluster-1 has 30 utterances, below splits.min_fold_size=31'),
    (SplitsConfig(test_clusters=[1], min_fold_size=31), '0 of 9 clusters have >= 31 utterances .*1 dev folds'),
    (SplitsConfig(n_test_folds=11, min_fold_size=10), 'lower splits.n_test_folds'),
    (SplitsConfig(n_test_folds=2, n_dev_folds=8, min_fold_size=10), '8 dev folds and a training set are needed: lower splits.n_dev_folds'),
    (SplitsConfig(fractions=[1.0, 0.2], min_fold_size=10, min_fraction_size=50), 'fraction 0.2 of subset seed 0 has 42 utterances'),
])
def test_bad_configs_are_refused(cfg, message):
    utts = corpus()
    with pytest.raises(ValueError, match=message):
        make_splits(utts, {u.id: int(u.speaker[3:]) for u in utts}, cfg, seed=0)


@pytest.mark.parametrize('kw, message', [
    (dict(test_clusters=[1], train_clusters=[1, 2]), r'splits.train_clusters=\[1, 2\]: must not share clusters with splits.test_clusters'),
    (dict(fractions=[1.0, 0.25]), r'splits.fractions=\[1.0, 0.25\]: fractions are named'),
    (dict(subset_seeds=[1, 1]), r'splits.subset_seeds=\[1, 1\]: a non-empty list of distinct integers'),
    (dict(n_dev_folds=-1), r'splits.n_dev_folds=-1'),
])
def test_bad_config_values_are_refused_when_made(kw, message):
    with pytest.raises(ValueError, match=message): SplitsConfig(**kw)


def test_utterance_in_train_and_test_or_dev_is_refused():
    s = {'train': ['a', 'b'], 'test_folds': {'cluster-0': ['b', 'c']}, 'fractions': {'0': {'1.0': ['a', 'b']}}, 'subset_seeds': [0]}
    with pytest.raises(ValueError, match='1 utterance\\(s\\) in both train and test fold cluster-0'):
        check_splits(s)
    with pytest.raises(ValueError, match='1 utterance\\(s\\) in both train and dev fold cluster-1'):
        check_splits({**s, 'test_folds': {'cluster-0': ['c']}, 'dev_folds': {'cluster-1': ['a']}})
    with pytest.raises(ValueError, match="'c' is in test fold cluster-0 and dev fold cluster-1"):
        check_splits({**s, 'test_folds': {'cluster-0': ['c']}, 'dev_folds': {'cluster-1': ['c']}})


def test_unlabelled_utterance_and_k_above_utterances_are_refused():
    utts = corpus(40, 4)
    cluster = {u.id: int(u.speaker[3:]) for u in utts[:-1]}
    with pytest.raises(ValueError, match='have no cluster label'):
        make_splits(utts, cluster, SplitsConfig(min_fold_size=5, min_fraction_size=5))
    with pytest.raises(ValueError, match='larger than the number of utterances'):
        clustering_grid(ClusteringConfig(birch_k=[41]), len(utts))


def test_smoke_run_has_dev_folds_and_subsets_per_seed(smoke_run):
    "The smoke study's splits.json: dev folds disjoint from training and test, each subset seed its own nested subsets."
    from asr_kd_nb.rundir import fraction_ids, dev_folds, test_folds, selection_folds, subset_seeds
    d = smoke_run['dir']
    s = read_json(Path(d)/'splits.json')
    dev, test, train = ({i for f in dev_folds(d).values() for i in f}, {i for f in test_folds(d).values() for i in f}, set(s['train']))
    assert dev and test and train and not dev & test and not dev & train and not test & train
    assert not set(s['dev_clusters']) & (set(s['test_clusters']) | set(s['train_clusters']))
    assert selection_folds(d) == dev_folds(d)                                   # the smoke preset selects on dev
    seeds = subset_seeds(d)
    assert len(seeds) >= 2
    for f in (0.5,):
        a, b = fraction_ids(d, f, seeds[0]), fraction_ids(d, f, seeds[1])
        assert a != b and set(a) <= set(fraction_ids(d, 1.0, seeds[0])) and set(b) <= set(fraction_ids(d, 1.0, seeds[1]))
    assert fraction_ids(d, 1.0, seeds[0]) == fraction_ids(d, 1.0, seeds[1]) == s['train']
