"Clustering stage: embedders (offline MFCC statistics, x-vectors from a local save_pretrained model), sweep, choice, files."
import csv, shutil
from pathlib import Path
import numpy as np, pytest
from asr_kd_nb.config import study_config, save_config, read_json
from asr_kd_nb.corpus import CorpusConfig, build_corpus, read_manifest
from asr_kd_nb.clustering import (ClusteringConfig, cluster_stage, clustering_grid, birch_labels, sweep_clusterings,
                                  synthetic_speaker_vectors, embed_xvectors, read_labels)


@pytest.fixture(scope='module')
def corpus_dir(tmp_path_factory):
    "A tiny embedded corpus (4 eSpeak speakers, 48 utterances), built once."
    d = tmp_path_factory.mktemp('corpus')
    build_corpus(CorpusConfig(n_utterances=48, n_speakers=4, n_ood=2, n_ood_speakers=1), d)
    return d


def make_run(tmp_path, corpus_dir, overrides):
    run = tmp_path/'run'
    shutil.copytree(corpus_dir/'corpus', run/'corpus')
    save_config(study_config('smoke', overrides), run)
    return run


def tiny_xvector_model(path):
    "A randomly initialised Wav2Vec2ForXVector with a tiny config, saved like a hub checkpoint."
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForXVector, Wav2Vec2FeatureExtractor
    torch.manual_seed(0)
    c = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(16, 16),
                       conv_kernel=(10, 3), conv_stride=(5, 2), tdnn_dim=(16, 16), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1),
                       xvector_output_dim=12, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=8)
    Wav2Vec2ForXVector(c).save_pretrained(path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(path)
    return str(path)


def test_mfcc_stage_recovers_speakers_and_writes_contract_files(tmp_path, corpus_dir):
    run = make_run(tmp_path, corpus_dir, {'clustering': {'kmeans_k': [3, 4], 'birch_k': [3, 4, 5], 'agglomerative_k': [4]}})
    chosen = cluster_stage(run)
    ids = [u.id for u in read_manifest(run/'corpus'/'manifest.jsonl')]
    X = np.load(run/'clustering'/'embeddings.npy')
    assert X.shape == (48, 120)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    labels = read_labels(run/'clustering'/'labels.csv')
    assert list(labels) == ids                                  # rows in manifest order
    assert (run/'clustering'/'labels.csv').read_text().startswith('id,cluster\n')
    assert chosen['rule'] == 'speakers' and chosen['k'] == 4 and chosen['algorithm'] == 'birch'
    assert chosen['ari'] >= 0.9, chosen                         # 4 eSpeak voices are told apart
    assert read_json(run/'clustering'/'chosen.json') == chosen
    from sklearn.metrics import silhouette_score, adjusted_rand_score
    spk = [u.speaker for u in read_manifest(run/'corpus'/'manifest.jsonl')]
    lab = list(labels.values())
    assert chosen['k'] == len(set(lab)) == 4
    assert abs(chosen['silhouette'] - silhouette_score(X, lab)) < 1e-3      # the recorded score is the labels' silhouette
    assert abs(chosen['ari'] - adjusted_rand_score(spk, lab)) < 1e-4
    rows = read_json(run/'clustering'/'sweep.json')['rows']
    assert sorted(r['name'] for r in rows) == sorted(['kmeans-k-means++-k3', 'kmeans-k-means++-k4', 'kmeans-random-k3', 'kmeans-random-k4',
                                                     'birch-t0.44-k3', 'birch-t0.44-k4', 'birch-t0.44-k5', 'agglomerative-cosine-average-k4'])
    assert all(-1 <= r['silhouette'] <= 1 and 0 <= r['nmi'] <= 1 and r['min_size'] * r['k'] <= 48 <= r['max_size'] * r['k'] for r in rows)
    import matplotlib.pyplot as plt
    h, w = plt.imread(run/'clustering'/'umap.png').shape[:2]
    assert w > 2 * h, (w, h)                                    # 3 square panels side by side


def test_xvector_embedder_from_local_save_pretrained_model(tmp_path, corpus_dir):
    import torch
    torch.set_num_threads(1)                                     # tiny model: one thread is much faster on a shared machine
    model = tiny_xvector_model(tmp_path/'xvec')
    run = make_run(tmp_path, corpus_dir, {'device': 'cpu', 'clustering': {
        'embedder': 'xvector', 'xvector_model': model, 'batch_size': 5, 'kmeans_k': [4], 'birch_k': [4],
        'birch_thresholds': [0.001], 'agglomerative_k': [], 'choose': 'silhouette', 'umap_max_points': 30}})
    chosen = cluster_stage(run)
    X = np.load(run/'clustering'/'embeddings.npy')
    assert X.shape == (48, 12)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    assert chosen['rule'] == 'silhouette' and chosen['umap_points'] == 30
    # batching sorts by length and restores manifest order: each row is closest to the same utterance embedded alone
    # (not equal: padding shifts the conv encoder's group norm a little)
    from asr_kd_nb.corpus import decode_audio
    from scipy.spatial.distance import cdist
    waves = [decode_audio(u.audio_filepath) for u in read_manifest(run/'corpus'/'manifest.jsonl')[:8]]
    single = embed_xvectors(waves, model, batch_size=1)
    assert (cdist(single, X[:8]).argmin(1) == np.arange(8)).all()
    np.testing.assert_allclose(single, X[:8], atol=2e-2)


def test_missing_xvector_model_fails_fast(tmp_path):
    with pytest.raises(Exception, match='does not exist'):
        embed_xvectors([np.zeros(16000, np.float32)], str(tmp_path/'nope'))


def test_k_larger_than_utterances_is_refused():
    with pytest.raises(ValueError, match=r'k=10 is larger than the number of utterances \(9\)'):
        clustering_grid(ClusteringConfig(kmeans_k=[10]), 9)


def test_birch_matches_scikit_learn():
    from sklearn.cluster import Birch
    from sklearn.metrics import adjusted_rand_score
    X, _ = synthetic_speaker_vectors(400, 16, seed=1, per_speaker=40, spread=2.0)
    for t in (0.1, 0.44):
        got, _, _ = birch_labels(X, [4, 10], t)
        for k in (4, 10):
            assert adjusted_rand_score(Birch(n_clusters=k, threshold=t).fit_predict(X.astype(np.float64)), got[k]) == 1.0


def test_silhouette_uses_a_seeded_sample_above_the_limit():
    from sklearn.metrics import silhouette_score
    X, spk = synthetic_speaker_vectors(300, 8, seed=0, per_speaker=60)
    grid = [('kmeans', {'init': 'k-means++', 'k': 5})]
    rows, labels = sweep_clusterings(X, grid, list(spk), silhouette_sample=120, seed=3)
    assert rows[0]['silhouette_points'] == 120
    again = sweep_clusterings(X, grid, list(spk), silhouette_sample=120, seed=3)[0]
    assert [{**r, 'fit_s': 0} for r in again] == [{**r, 'fit_s': 0} for r in rows]        # seeded (fit time aside)
    full = sweep_clusterings(X, grid, list(spk), silhouette_sample=1000, seed=3)[0][0]
    assert full['silhouette_points'] == 300
    assert abs(full['silhouette'] - silhouette_score(X, labels['kmeans-k-means++-k5'])) < 1e-3
