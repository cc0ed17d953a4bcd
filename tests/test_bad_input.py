"Bad input caught early, with a clear error that names the key: one test per kind of bad input."
import io, json, os, re, socket, time
from pathlib import Path
import numpy as np, pytest, soundfile as sf
from conftest import asr_kd, refused_run
from asr_kd_nb.config import (study_config, save_config, validate_config, check_source, resolve_source, hub_reachable,
                              apply_hub_mode, InvalidConfig, ConfigError, MissingSourceError)
from asr_kd_nb.pipeline import build_config, prepare_run_dir, available_stages, resume_advice, StageFailed, ConfigMismatch
from asr_kd_nb.corpus import CorpusConfig, Utterance, build_corpus, ingest, hf_candidates, write_manifest, read_manifest

SR = 16000
def tone(sec=1.0): return (0.3 * np.sin(np.arange(int(sec * SR)) * 2 * np.pi * 220 / SR)).astype('float32')
def wav_bytes(x): b = io.BytesIO(); sf.write(b, x, SR, format='WAV'); return b.getvalue()

@pytest.fixture
def clean_hub_env(monkeypatch):
    "No offline variables and no hub mode from the caller's environment; restored afterwards."
    for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'ASR_KD_HUB'):
        monkeypatch.setenv(k, 'x'); monkeypatch.delenv(k)   # recorded, so whatever the test sets is undone
    yield monkeypatch


# --- item 3 and 4: the whole config is checked when `asr-kd run` starts: exit 2, `asr-kd: error:`, the key, nothing made
@pytest.mark.parametrize('name, config, key', [
    ('fractions', {'splits': {'fractions': [1.0, -0.5]}}, 'splits.fractions'),
    ('teacher-path', {'teacher': {'source': '/nonexistent/w2v2-teacher'}}, 'teacher.source'),
    ('space-string', {'search': {'space': 'x'}}, 'search.space'),
    ('section-string', {'teacher': 'x'}, "teacher='x'"),
    ('wrong-type', {'corpus': {'n_utterances': '240'}}, 'corpus.n_utterances'),
    ('clusters', {'clustering': {'choose': 'config', 'k': 2}}, 'clustering.k'),
    ('algorithm', {'clustering': {'algorithm': 'dbscan'}}, "clustering.algorithm='dbscan': one of ('kmeans', 'birch', 'agglomerative')"),
])
def test_bad_config_exits_2_fast_naming_the_key_and_makes_nothing(tmp_path, name, config, key):
    r, _ = refused_run(tmp_path, config, timeout=120)
    assert key in r.stderr, r.stderr


def test_run_dir_that_is_a_file_or_under_a_file_exits_2_and_is_left_unchanged(tmp_path):
    f = tmp_path/'notes.txt'; f.write_text('precious\n')
    for run in (f, f/'run'):
        r = asr_kd('run', '--preset', 'smoke', '--run-dir', run, '--no-progress', timeout=120)
        assert r.returncode == 2 and 'asr-kd: error:' in r.stderr and 'is a file' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert f.read_text() == 'precious\n'


def test_every_problem_is_reported_at_once(tmp_path):
    available_stages()
    with pytest.raises(InvalidConfig) as e:
        validate_config(study_config('smoke', {'corpus': {'source': 'nemo', 'nemo_manifest': str(tmp_path/'m.jsonl')},
                                               'teacher': {'source': str(tmp_path/'teacher')}}))
    assert len(e.value.problems) == 2
    assert 'corpus.nemo_manifest' in str(e.value) and 'teacher.source' in str(e.value) and 'no such' in str(e.value)


def test_relative_local_path_is_a_path_not_a_hub_id(tmp_path, clean_hub_env):
    from asr_kd_nb.teacher import make_w2v2
    model, proc = make_w2v2()   # a folder that holds a teacher (an empty one is refused: test_fail_early.py)
    model.save_pretrained(tmp_path/'models'/'w2v2-teacher'); proc.save_pretrained(tmp_path/'models'/'w2v2-teacher')
    clean_hub_env.chdir(tmp_path)
    cfg = tmp_path/'c.json'; cfg.write_text(json.dumps({'preset': 'smoke', 'teacher': {'source': 'models/w2v2-teacher'}}))
    c = build_config(None, cfg)
    # made absolute, so stage kernels (working directory = the run dir) find it, and `load_teacher` sees a local path
    assert c.teacher.source == str((tmp_path/'models'/'w2v2-teacher').resolve())
    assert resolve_source(c.teacher.source, 'teacher model', 'teacher.source')[0] == 'local'


# --- item 5: resume advice that works
def test_resume_advice_names_force_when_the_fix_is_a_config_change(tmp_path):
    available_stages()
    e = StageFailed('01_clustering', tmp_path/'notebooks'/'01_clustering.ipynb',
                    'ValueError: the chosen clustering ... lower clustering.threshold (Birch left 1 subclusters)')
    adv = resume_advice(e)
    assert 'clustering.threshold' in adv and '--force 01_clustering' in adv and 'rerun the same command' in adv
    prepare_run_dir(study_config('smoke'), tmp_path/'run')
    with pytest.raises(ConfigMismatch, match='--force 02_splits'):
        prepare_run_dir(study_config('smoke', {'splits': {'fractions': [1.0, 0.3]}}), tmp_path/'run')


# --- item 1: a teacher whose frames are not 20 ms is refused before the cache is built
def test_teacher_with_wrong_frame_rate_is_refused_before_the_cache(tmp_path):
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Config
    from asr_kd_nb.teacher import make_w2v2, teacher_stage, check_frame_rate, load_teacher
    model, proc = make_w2v2()
    d = model.config.to_dict(); d.update(conv_stride=[10, 1, 1, 1, 1, 1, 1], conv_kernel=[10, 3, 3, 3, 3, 2, 2])
    tdir = tmp_path/'w2v2-stride10'
    Wav2Vec2ForCTC(Wav2Vec2Config(**d)).save_pretrained(tdir); proc.save_pretrained(tdir)
    run = tmp_path/'run'
    save_config(study_config('smoke', {'teacher': {'source': str(tdir)}}, sections=['teacher']), run)
    with pytest.raises(ValueError) as e: teacher_stage(run, progress=False)
    msg = str(e.value)
    frames = int(re.search(r'gives (\d+) frames for a 1 s probe clip', msg).group(1))
    assert frames > 1500 and 'MFCCs give 49 (20.408 ms per frame' in msg and 'teacher.source' in msg
    assert not (run/'cache').exists()
    model.save_pretrained(tmp_path/'ok'); proc.save_pretrained(tmp_path/'ok')     # the 320-sample stride passes
    assert check_frame_rate(load_teacher(str(tmp_path/'ok')))['teacher_frames'] == 49


# --- item 2: a clustering with fewer clusters than asked fails stage 01, naming what to change
def test_one_cluster_clustering_fails_the_clustering_stage(tmp_path):
    from asr_kd_nb.clustering import cluster_stage
    available_stages()   # registers the splits section, which the check reads
    run = tmp_path/'run'
    utts = [Utterance(f'u{i:03d}', str(run/'corpus'/'audio'/f'u{i:03d}.wav'), 'да', 1.0, None) for i in range(40)]
    write_manifest(utts, run/'corpus'/'manifest.jsonl')
    cfg = study_config('smoke', {'clustering': {'choose': 'config', 'algorithm': 'birch', 'k': 10, 'threshold': 1000.0,
                                                'birch_k': [10], 'birch_thresholds': [1000.0], 'kmeans_k': [3], 'agglomerative_k': [3]}},
                       sections=['clustering', 'splits'])
    save_config(cfg, run)
    cl = cfg.clustering   # embeddings made here (reused by the stage): one tight blob, which Birch at radius 1000 cannot split
    (run/'clustering').mkdir()
    np.save(run/'clustering'/'embeddings.npy', np.random.default_rng(0).normal(size=(40, 8)).astype('float32'))
    (run/'clustering'/'embeddings.json').write_text(json.dumps({'ids': [u.id for u in utts], 'embedder': cl.embedder, 'n_mfcc': cl.n_mfcc,
        'vad_db': cl.vad_db, 'xvector_model': cl.xvector_model, 'xvector_revision': cl.xvector_revision}))
    with pytest.raises(ValueError) as e: cluster_stage(run)
    msg = str(e.value)
    assert 'birch' in msg and 'threshold=1000.0' in msg and 'found 1 cluster(s)' in msg and 'the 10 asked for' in msg
    assert 'clustering.threshold' in msg and 'splits.n_test_folds' in msg
    assert not (run/'clustering'/'labels.csv').exists()      # stage 02 never sees it


# --- item 6 and 8: wrong-typed manifest lines and duplicate file names are counted in corpus/report.json
def test_bad_manifest_lines_are_counted_and_ids_stay_unique(tmp_path):
    for sub in ('a', 'b'): (tmp_path/sub).mkdir(); sf.write(tmp_path/sub/'clip.wav', tone(), SR)
    lines = [{'audio_filepath': 'a/clip.wav', 'text': 'да'}, {'audio_filepath': 'b/clip.wav', 'text': 'нет'},
             {'audio_filepath': 'a/clip.wav', 'text': 123}, {'audio_filepath': 7, 'text': 'да'},
             {'id': 'x', 'audio_filepath': 'a/clip.wav', 'text': 'да'}, {'id': 'x', 'audio_filepath': 'b/clip.wav', 'text': 'да'},
             {'audio_filepath': 'gone/clip.wav', 'text': 'да', 'id': 'gone'}]
    (tmp_path/'m.jsonl').write_text('\n'.join(json.dumps(l, ensure_ascii=False) for l in lines) + '\n[1, 2]\n')
    run = tmp_path/'run'
    rep = build_corpus(CorpusConfig(source='nemo', nemo_manifest=str(tmp_path/'m.jsonl')), run)
    saved = json.loads((run/'corpus'/'report.json').read_text())
    assert saved['rejected_by_reason'] == {'malformed manifest line': 3, 'duplicate utterance id': 1, 'missing file': 1}
    assert saved['candidates'] == 8 and saved['accepted'] == 3
    assert sorted(u.id for u in read_manifest(run/'corpus'/'manifest.jsonl')) == ['a/clip', 'b/clip', 'x']
    why = {r['reason']: r['detail'] for r in saved['rejections']}
    assert str(tmp_path/'gone'/'clip.wav') in why['missing file'] and 'gone' in why['missing file']   # item 8: the path
    details = ' '.join(r['detail'] for r in saved['rejections'])
    assert 'text 123 is not a string' in details and 'audio_filepath 7' in details


# --- item 7: a hub snapshot directory loads, and the advice for datasets works
def test_hub_snapshot_directory_of_a_dataset_loads(tmp_path):
    datasets = pytest.importorskip('datasets')
    snap = tmp_path/'golos-snapshot'/'data'; snap.mkdir(parents=True)
    for split, n in (('train', 3), ('validation', 1), ('test', 2)):
        ds = datasets.Dataset.from_dict({'audio': [{'bytes': wav_bytes(tone(1 + i / 10)), 'path': f'{split}{i}.wav'} for i in range(n)],
                                         'transcription': ['фраза'] * n}).cast_column('audio', datasets.Audio(sampling_rate=SR))
        ds.to_parquet(str(snap/f'{split}-00000-of-00001.parquet'))
    n, it = hf_candidates(str(tmp_path/'golos-snapshot'), ['train', 'test', 'validation'])
    acc, rep = ingest(it, tmp_path/'out', total=n)
    assert n == 6 and [u.id for u in acc] == ['train-000000', 'train-000001', 'train-000002', 'test-000000', 'test-000001', 'validation-000000']


def test_dataset_advice_names_the_repo_type_and_a_loadable_form(clean_hub_env):
    clean_hub_env.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(ConfigError) as e: check_source('someone/golos', 'corpus.hf_dataset', 'dataset', 'dataset')
    assert 'hf download someone/golos --repo-type dataset' in str(e.value) and 'save_to_disk' in str(e.value)


def test_readme_local_json_example_is_complete(tmp_path, clean_hub_env):
    readme = (Path(__file__).resolve().parents[1]/'README.md').read_text(encoding='utf-8')
    text = readme[readme.index('local.json'):]
    text = text[text.index('{'):text.index('\n```', text.index('{'))]
    example = json.loads(text)
    for key in ('hf_dataset', 'ood_dataset'): assert key in example['corpus']
    assert 'xvector_model' in example['clustering'] and 'source' in example['teacher']
    # with the folders it names present, the example passes the whole check offline: nothing else needs the hub
    local = json.loads(text.replace('"/data/', f'"{tmp_path}/data/').replace('"/models/', f'"{tmp_path}/models/'))
    for sec in local.values():
        for v in (sec.values() if isinstance(sec, dict) else []):
            if str(v).startswith(str(tmp_path)): Path(v).mkdir(parents=True)
    cfg = tmp_path/'local.json'; cfg.write_text(json.dumps(local))
    # an empty model folder is no model: refused before stage 00, naming its key
    with pytest.raises(InvalidConfig, match='teacher.source=.*has no config.json'): build_config(None, cfg)
    from asr_kd_nb.teacher import make_w2v2
    from test_clustering import tiny_xvector_model
    model, proc = make_w2v2(); model.save_pretrained(local['teacher']['source']); proc.save_pretrained(local['teacher']['source'])
    with pytest.raises(InvalidConfig, match='clustering.xvector_model=.*has no config.json'): build_config(None, cfg)
    tiny_xvector_model(local['clustering']['xvector_model'])
    assert build_config(None, cfg).preset == 'paper'


# --- item 9: offline variables and the config switch keep the process off the network
def test_offline_variables_and_hub_switch_skip_the_tcp_probe(clean_hub_env, tmp_path):
    import asr_kd_nb.config as config
    def no_network(*a, **k): raise AssertionError('opened a TCP connection')
    clean_hub_env.setattr(socket, 'create_connection', no_network)
    clean_hub_env.setattr(config, '_HUB_OK', None)
    for var, repo_type in (('HF_HUB_OFFLINE', 'model'), ('HF_DATASETS_OFFLINE', 'dataset')):
        clean_hub_env.setenv(var, '1')
        assert not hub_reachable(repo_type=repo_type)
        with pytest.raises(MissingSourceError, match='offline'): resolve_source('someone/x', 'thing', 'teacher.source', repo_type)
        clean_hub_env.delenv(var); clean_hub_env.delenv('HF_HUB_OFFLINE', raising=False)
    apply_hub_mode('online')
    assert resolve_source('someone/x', 'thing', 'teacher.source') == ('hub', 'someone/x')    # trusted, not probed
    clean_hub_env.setenv('ASR_KD_HUB', 'auto')
    # offline with the snapshot in the HF cache: usable
    from huggingface_hub import constants
    clean_hub_env.setattr(constants, 'HF_HUB_CACHE', str(tmp_path/'hub'))
    (tmp_path/'hub'/'models--someone--cached'/'snapshots'/'abc123').mkdir(parents=True)
    apply_hub_mode('offline')
    assert check_source('someone/cached', 'teacher.source', 'teacher model', 'model', 'abc123') == 'someone/cached'
    with pytest.raises(ConfigError, match='HF cache has no model'): check_source('someone/other', 'teacher.source', 'teacher model')


def test_hub_switch_is_a_config_key():
    with pytest.raises(ConfigError, match="hub='sometimes'"): study_config('smoke', {'hub': 'sometimes'})
    assert study_config('smoke', {'hub': 'offline'}).to_dict()['hub'] == 'offline'
