"Recorded speech in the smoke study (where Debian's festvox-ru is installed): it trains, its held-out sentences are a separate test set."
import json
from pathlib import Path
import pytest
from asr_kd_nb.corpus import FESTVOX_RU_DIR, read_manifest
from asr_kd_nb.clustering import read_labels

from conftest import asr_kd

needs_festvox = pytest.mark.skipif(not (Path(FESTVOX_RU_DIR)/'etc'/'txt.done.data').is_file(),
                                   reason="Debian's festvox-ru is not installed (apt-get install festvox-ru)")


def test_corpus_stage_without_festvox_says_the_study_is_synthetic(tmp_path):
    "`corpus.real_speech_dir` at a missing folder (as on a machine without festvox-ru): logged, no real-speech set, the card says so."
    cfg = tmp_path/'c.json'
    cfg.write_text(json.dumps({'corpus': {'real_speech_dir': str(tmp_path/'no-festvox'), 'n_utterances': 12, 'n_speakers': 3,
                                          'n_ood': 3, 'n_ood_speakers': 1}}))
    r = asr_kd('run', '--preset', 'smoke', '--run-dir', tmp_path/'run', '--config', cfg, '--stages', '00_corpus', '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]
    c = tmp_path/'run'/'corpus'
    rep = json.loads((c/'report.json').read_text())
    assert rep['real_speech']['present'] is False and 'no-festvox' in rep['real_speech']['reason']
    assert not (c/'real_manifest.jsonl').exists() and {u.source for u in read_manifest(c/'manifest.jsonl')} == {'embedded'}
    executed = (tmp_path/'run'/'notebooks'/'00_corpus.ipynb').read_text()
    assert 'real-speech set absent' in executed and 'synthetic corpus alone' in executed
    assert 'Recorded speech: absent' in (c/'card.md').read_text()


@needs_festvox
def test_smoke_run_trains_on_recorded_speech_and_tests_on_held_out_sentences(smoke_run):
    run = Path(smoke_run['dir'])
    main = read_manifest(run/'corpus'/'manifest.jsonl')
    real = read_manifest(run/'corpus'/'real_manifest.jsonl')
    splits = json.loads((run/'splits.json').read_text())
    recorded = {u.id for u in main if u.source == 'festvox-ru'}
    assert recorded and recorded <= set(splits['train'])                               # recorded utterances are in training
    assert all(Path(u.audio_filepath).is_file() for u in real) and {u.source for u in real} == {'festvox-ru'}
    text = {u.id: u.text for u in main}
    assert not {text[i] for i in splits['train']} & {u.text for u in real}             # no real-speech test sentence is trained on
    assert not {u.id for u in real} & set(text)
    labels = read_labels(run/'clustering'/'labels.csv')
    pinned = sorted({int(labels[i]) for i in recorded})
    assert splits['must_train_clusters'] == pinned and not set(pinned) & set(splits['test_clusters'])
    teacher = json.loads((run/'teacher'/'teacher.json').read_text())
    assert 0 <= teacher['cer']['real'] and teacher['real_utterances'] == len(real)
    base = json.loads((run/'kd'/'baseline.json').read_text())
    assert base['real_speech']['utterances'] == len(real) and 0 <= base['real_speech']['cer']
    only = read_manifest(run/'corpus'/'teacher_manifest.jsonl')                      # recorded sentences that train the teacher only
    assert only and not {u.id for u in only} & set(text) and not {u.text for u in only} & {u.text for u in real}
    assert teacher['training']['teacher_only'] == {'utterances': len(only), 'hours': round(sum(u.duration for u in only) / 3600, 4),
                                                   'students_pool_utterances': len(splits['train'])}
    assert not {u.id for u in only} & set(json.loads((run/'cache'/'index.json').read_text())['ids'])   # no student reads them
    card = json.loads((run/'corpus'/'card.json').read_text())
    assert card['totals']['recorded']['utterances'] == len(recorded) + len(real) + len(only)
