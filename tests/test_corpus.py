"Corpus: every rejection reason, both loaders of the real corpus, deterministic synthesis, recorded speech and the data card."
import io, json
from pathlib import Path
import numpy as np, pytest, soundfile as sf
from asr_kd_nb.corpus import (ingest, decode_audio, RejectedAudio, hf_candidates, nemo_candidates, synth_candidates,
                              build_corpus, CorpusConfig, read_manifest, REJECTION_REASONS)

SR = 16000
def tone(sec=1.0, sr=SR, ch=1):
    x = (0.3 * np.sin(np.arange(int(sec * sr)) * 2 * np.pi * 220 / sr)).astype('float32')
    return np.stack([x] * ch, 1) if ch > 1 else x

def wav_bytes(x, sr=SR, subtype='PCM_16', fmt='WAV'):
    b = io.BytesIO(); sf.write(b, x, sr, subtype=subtype, format=fmt); return b.getvalue()

def bad_inputs(tmp):
    "One candidate per rejection reason, with the reason it must get."
    (tmp/'empty.wav').write_bytes(b'')
    (tmp/'trunc.wav').write_bytes(wav_bytes(tone(1.0))[:5000])
    (tmp/'text.wav').write_text('this is a text file, not audio\n' * 20)
    return [
        (dict(id='missing', audio=tmp/'nope.wav', text='да'), 'missing file'),
        (dict(id='empty', audio=tmp/'empty.wav', text='да'), 'empty file'),
        (dict(id='trunc', audio=tmp/'trunc.wav', text='да'), 'truncated file'),
        (dict(id='notaudio', audio=tmp/'text.wav', text='да'), 'not decodable audio'),
        (dict(id='corrupt', audio=b'RIFF\x10\x00\x00\x00WAVEfmt garbage' * 3, text='да'), 'not decodable audio'),
        (dict(id='zero', audio=wav_bytes(np.zeros(0, 'float32')), text='да'), 'zero-length audio'),
        (dict(id='nan', audio=wav_bytes(np.array([0.1, np.nan, np.inf] * 2000, 'float32'), subtype='FLOAT'), text='да'), 'non-finite samples'),
        (dict(id='short', audio=wav_bytes(tone(0.1)), text='да'), 'too short'),
        (dict(id='long', audio=wav_bytes(tone(21.0)), text='да'), 'too long'),
        (dict(id='notext', audio=wav_bytes(tone()), text=' ?! '), 'empty transcript'),
        (dict(id='latin', audio=wav_bytes(tone()), text='Включи Wi-Fi'), 'characters outside the vocabulary'),
        (dict(id='digits', audio=wav_bytes(tone()), text='поставь 7 утра'), 'characters outside the vocabulary'),
        (dict(id='malformed', reject=('malformed manifest line', 'line 3')), 'malformed manifest line'),
    ]

def test_every_rejection_reason_is_counted_with_its_reason(tmp_path):
    cases = bad_inputs(tmp_path)
    good = [dict(id='ok1', audio=wav_bytes(tone(1.0, 44100, ch=2), 44100), text='Включи свет!'),
            dict(id='ok2', audio=wav_bytes(tone(2.0, 8000), 8000), text='ёлка')]
    dup = dict(id='ok1', audio=wav_bytes(tone()), text='да')   # an id already taken: rejected, counted, never an abort
    acc, rep = ingest([c for c, _ in cases] + good + [dup], tmp_path/'out')
    assert [u.id for u in acc] == ['ok1', 'ok2']
    got = {r['id']: r['reason'] for r in rep['rejections']}
    assert got == {**{c['id']: reason for c, reason in cases}, 'ok1': 'duplicate utterance id'}
    assert rep['candidates'] == len(cases) + 3 and rep['accepted'] + rep['rejected'] == rep['candidates']
    assert set(got.values()) == set(REJECTION_REASONS), 'a rejection reason has no test'
    # accepted audio is 16 kHz mono with the right length, transcripts normalised
    for u, sec in zip(acc, (1.0, 2.0)):
        info = sf.info(u.audio_filepath)
        assert (info.samplerate, info.channels) == (SR, 1) and abs(info.duration - sec) < 0.01
    assert [u.text for u in acc] == ['включи свет', 'елка']

def test_resampling_and_downmix(tmp_path):
    x = decode_audio(wav_bytes(tone(1.0, 22050, ch=2), 22050))
    assert x.dtype == np.float32 and len(x) == SR and 0.29 < np.abs(x).max() < 0.31

def test_hf_loader_golos_schema_from_disk(tmp_path):
    datasets = pytest.importorskip('datasets')
    def split(n, off):
        rows = {'audio': [{'bytes': wav_bytes(tone(1.0 + i / 10)), 'path': f'{off + i}.wav'} for i in range(n)],
                'transcription': [f'фраза номер {w}' for w in ['один', 'два', 'три', 'четыре'][:n]]}
        return datasets.Dataset.from_dict(rows).cast_column('audio', datasets.Audio(sampling_rate=SR))
    dd = datasets.DatasetDict({'train': split(3, 0), 'validation': split(1, 10), 'test': split(2, 20)})
    dd['test'] = dd['test'].map(lambda r, i: {'transcription': 'hello' if i == 1 else r['transcription']}, with_indices=True)
    dd.save_to_disk(str(tmp_path/'golos'))
    n, it = hf_candidates(str(tmp_path/'golos'), ['train', 'test', 'validation'])
    acc, rep = ingest(it, tmp_path/'out', total=n)
    assert n == 6 and [u.id for u in acc] == ['train-000000', 'train-000001', 'train-000002', 'test-000000', 'validation-000000']
    assert rep['rejected_by_reason'] == {'characters outside the vocabulary': 1}
    assert all(u.speaker is None for u in acc) and acc[3].source == 'hf:test'
    with pytest.raises(ValueError, match="no split"): hf_candidates(str(tmp_path/'golos'), ['train', 'dev'])

def test_nemo_manifest_loader(tmp_path):
    (tmp_path/'files').mkdir()
    sf.write(tmp_path/'files'/'a.wav', tone(1.5), SR)
    sf.write(tmp_path/'files'/'b.flac', tone(1.0, 48000), 48000)
    lines = [{'audio_filepath': 'files/a.wav', 'text': 'один два', 'duration': 1.5},
             {'audio_filepath': 'files/b.flac', 'text': 'три', 'duration': 1.0},
             {'audio_filepath': 'files/c.wav', 'text': 'четыре', 'duration': 1.0}]
    (tmp_path/'m.jsonl').write_text('\n'.join(json.dumps(l, ensure_ascii=False) for l in lines) + '\n{"text": "нет пути"}\n')
    n, it = nemo_candidates(tmp_path/'m.jsonl')
    acc, rep = ingest(it, tmp_path/'out', total=n)
    assert [u.id for u in acc] == ['a', 'b'] and [u.duration for u in acc] == [1.5, 1.0]
    assert rep['rejected_by_reason'] == {'missing file': 1, 'malformed manifest line': 1}

def test_synthesis_is_deterministic_and_speakers_known(tmp_path):
    cfg = CorpusConfig(n_utterances=12, n_speakers=4, n_ood=4, n_ood_speakers=2, seed=3)
    r1 = build_corpus(cfg, tmp_path/'a'); r2 = build_corpus(cfg, tmp_path/'b')
    m1, m2 = (tmp_path/'a'/'corpus'/'manifest.jsonl').read_text(), (tmp_path/'b'/'corpus'/'manifest.jsonl').read_text()
    assert m1 == m2 and r1['stats'] == r2['stats']
    u1, u2 = read_manifest(tmp_path/'a'/'corpus'/'manifest.jsonl'), read_manifest(tmp_path/'b'/'corpus'/'manifest.jsonl')
    assert all(Path(a.audio_filepath).read_bytes() == Path(b.audio_filepath).read_bytes() for a, b in zip(u1, u2))
    assert len({u.speaker for u in u1}) == 4 and r1['stats']['speakers'] == 4
    ood = read_manifest(tmp_path/'a'/'corpus'/'ood_manifest.jsonl')
    assert len(ood) == 4 and not {u.speaker for u in ood} & {u.speaker for u in u1} and not {u.text for u in ood} & {u.text for u in u1}
    # another seed gives other sentences
    other = build_corpus(CorpusConfig(n_utterances=12, n_speakers=4, n_ood=0, seed=4), tmp_path/'c')
    assert (tmp_path/'c'/'corpus'/'manifest.jsonl').read_text() != m1


# --- recorded speech (festvox-ru) and the data card -------------------------------------------------------------------
from asr_kd_nb.corpus import (fake_festvox, read_festvox_prompts, real_speech_candidates, real_speech_status, split_real_sentences,
                              FESTVOX_RU_DIR, REAL_SPEAKER)

FAKE_TEXTS = {f'ru_{i:04d}': t for i, t in enumerate([
    'Корреспондент, американской газеты, проходя мимо.', 'Она завела, прядь волнистых вол+ос за ухо.',
    'Со спок+ойным мужеством, ожидал всего.', 'В этом безумном г+ороде.', 'Ещё одна фраза, с ударением на +ё.',
    'Солнце садилось за лесом.', 'Дети играли во дворе.', 'Ветер гнал облака на восток.'], 1)}

def fake_config(tmp_path, **kw):
    "A tiny embedded corpus with a fake festvox folder (8 recordings, one missing, one malformed line) and no prose."
    fake_festvox(tmp_path/'voice', FAKE_TEXTS, seconds=1.5, missing=('ru_0008',), extra_lines=('( ru_0009 no quotes )',))
    return CorpusConfig(**{'n_utterances': 4, 'n_speakers': 2, 'n_ood': 2, 'n_ood_speakers': 1, 'real_speech_dir': str(tmp_path/'voice'),
                           'n_real_test': 3, 'n_real_train': 4, **kw})

def test_festvox_reader_drops_stress_marks_and_counts_bad_lines(tmp_path):
    fake_festvox(tmp_path/'v', FAKE_TEXTS, extra_lines=('garbage',))
    p = read_festvox_prompts(tmp_path/'v'/'etc'/'txt.done.data')
    assert [i for i, _, _ in p] == list(FAKE_TEXTS) + [None]
    assert p[1][1] == 'Она завела, прядь волнистых волос за ухо.' and not any('+' in t for _, t, _ in p if t)
    rep = build_corpus(fake_config(tmp_path), tmp_path/'run')
    main = read_manifest(tmp_path/'run'/'corpus'/'manifest.jsonl')
    real = read_manifest(tmp_path/'run'/'corpus'/'real_manifest.jsonl')
    recorded = [u for u in main if u.source == 'festvox-ru']
    assert recorded and all(u.speaker == REAL_SPEAKER for u in recorded + real)
    assert all('+' not in u.text and u.text == u.text.lower() and ',' not in u.text for u in recorded + real)
    assert 'еще одна фраза с ударением на е' in {u.text for u in recorded + real}       # normalised like every transcript
    # the missing recording and the malformed line are counted rejections, not silent losses
    rs = rep['real_speech']
    reasons = {**rs['test']['rejected_by_reason']}
    for k, v in rs['train']['rejected_by_reason'].items(): reasons[k] = reasons.get(k, 0) + v
    assert reasons == {'missing file': 1, 'malformed manifest line': 1}
    assert len(real) + len(recorded) + rs['unused_sentences'] + 1 == len(FAKE_TEXTS)
    assert sf.info(recorded[0].audio_filepath).samplerate == 16000 and Path(recorded[0].audio_filepath).parent == tmp_path/'run'/'corpus'/'audio'

def test_held_out_split_is_seeded_and_never_trained_on(tmp_path):
    ids = [f'ru_{i:04d}' for i in range(1, 101)]
    te, tr, only = split_real_sentences(ids, 20, 50, seed=7, n_teacher=10)
    assert (te, tr, only) == split_real_sentences(ids, 20, 50, seed=7, n_teacher=10) and (len(te), len(tr), len(only)) == (20, 50, 10)
    assert not set(te) & set(tr) and not (set(te) | set(tr)) & set(only)
    assert split_real_sentences(ids, 20, 80, seed=7)[0] == te                       # more training sentences: the same test set
    assert split_real_sentences(ids, 20, 50, seed=8)[0] != te
    cfg = fake_config(tmp_path, n_real_train=2, n_real_teacher=1)
    r1, r2 = real_speech_candidates(cfg), real_speech_candidates(cfg)
    assert [c['id'] for c in r1['test']] == [c['id'] for c in r2['test']]
    build_corpus(cfg, tmp_path/'run')
    main = read_manifest(tmp_path/'run'/'corpus'/'manifest.jsonl')
    real = read_manifest(tmp_path/'run'/'corpus'/'real_manifest.jsonl')
    only = read_manifest(tmp_path/'run'/'corpus'/'teacher_manifest.jsonl')
    assert len(real) == 3 and len(only) == 1 and not {u.id for u in real} & {u.id for u in main + only}
    assert not {u.text for u in real} & {u.text for u in main + only}                # no held-out sentence in any training set
    assert not {u.id for u in only} & {u.id for u in main}                           # teacher-only sentences are not the students'

def test_absent_festvox_is_logged_and_the_corpus_is_synthetic(tmp_path, caplog):
    cfg = fake_config(tmp_path, real_speech_dir=str(tmp_path/'not-installed'))
    with caplog.at_level('WARNING'):
        rep = build_corpus(cfg, tmp_path/'run')
    assert 'real-speech set absent' in caplog.text and 'synthetic corpus alone' in caplog.text
    assert rep['real_speech']['present'] is False and 'not-installed' in rep['real_speech']['reason']
    assert not (tmp_path/'run'/'corpus'/'real_manifest.jsonl').exists()
    assert {u.source for u in read_manifest(tmp_path/'run'/'corpus'/'manifest.jsonl')} == {'embedded'}
    st = real_speech_status(tmp_path/'run')
    assert st['present'] is False and 'not-installed' in st['reason']
    card = json.loads((tmp_path/'run'/'corpus'/'card.json').read_text())
    assert card['totals']['recorded'] == {'utterances': 0, 'hours': 0.0} and 'festvox-ru' not in card['audio_sources']
    assert 'Recorded speech: absent' in (tmp_path/'run'/'corpus'/'card.md').read_text()

def test_data_card_sources_sizes_and_notice(tmp_path):
    (tmp_path/'prose').mkdir()
    (tmp_path/'prose'/'f').write_text('Тише едешь — дальше будешь.\n%\nКто рано встает, тому бог подает!\n%\nДобрые слова лечат сердце.\n')
    build_corpus(fake_config(tmp_path, prose_dir=str(tmp_path/'prose'), prose_share=0.5), tmp_path/'run')
    c = tmp_path/'run'/'corpus'
    card, md = json.loads((c/'card.json').read_text()), (c/'card.md').read_text()
    sets = {'main': read_manifest(c/'manifest.jsonl'), 'out-of-domain': read_manifest(c/'ood_manifest.jsonl'),
            'real-speech test': read_manifest(c/'real_manifest.jsonl')}
    for r in card['rows']:                                                          # every row counts what its manifest holds
        us = [u for u in sets[r['set']] if u.source == r['source']]
        assert r['utterances'] == len(us) and abs(r['hours'] - sum(u.duration for u in us) / 3600) < 1e-4
    assert {(r['set'], r['kind']) for r in card['rows']} == {('main', 'synthetic'), ('main', 'recorded'), ('out-of-domain', 'synthetic'),
                                                             ('real-speech test', 'recorded')}
    assert set(card['text_sources']) == {'command grammar', 'out-of-domain grammar', 'prose', 'festvox-ru transcripts'}
    assert card['prose_utterances'] == 2 and 'fortunes-ru' in md
    fv = card['audio_sources']['festvox-ru']
    assert fv['kind'] == 'recorded' and fv['copyright'] == 'Copyright (c) 2005 Nickolay V. Shmyrev' and fv['licence'] == 'BSD-like'
    assert 'Nickolay V. Shmyrev  Copyright (c) 2005' in md and 'Any modifications must be clearly marked' in md
    assert 'Modified: recordings decoded and rewritten as 16 kHz' in md and 'stress marks "+" removed' in md
    assert card['audio_sources']['embedded']['kind'] == 'synthetic'
