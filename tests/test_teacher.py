"Teacher loading through the Hugging Face path, the emission cache (frames, values, staleness, resume) and the stage."
import json
from pathlib import Path

import numpy as np, pytest, soundfile as sf, torch
from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                          Wav2Vec2Processor)

from asr_kd_nb.config import read_json, save_config, study_config, write_json
from asr_kd_nb.corpus import RU_ALPHABET, Utterance, decode_audio, read_manifest, write_manifest
from asr_kd_nb.emissions import cache_hypothesis, cer
from asr_kd_nb.teacher import (EmissionCache, cache_emissions, ctc_greedy_decode, load_cache, load_teacher, student_mfcc,
                               teacher_stage)

# clip lengths in samples: short and long, lengths just around frame boundaries of both front ends
LENGTHS = [3200, 3519, 3520, 3521, 7000, 9999, 16000, 24321]


def tiny_wav2vec2(d: Path, seed: int = 0) -> Path:
    "A randomly initialised Wav2Vec2ForCTC with a Russian character tokenizer, saved with save_pretrained in `d`."
    d.mkdir(parents=True, exist_ok=True)
    vocab = {'<pad>': 0, '<unk>': 1, '|': 2, **{c: i + 3 for i, c in enumerate(RU_ALPHABET)}}
    (d/'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
    tok = Wav2Vec2CTCTokenizer(str(d/'vocab.json'), unk_token='<unk>', pad_token='<pad>', word_delimiter_token='|')
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=True)
    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(16,) * 7, feat_extract_norm='layer', do_stable_layer_norm=True,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0, mask_time_prob=0.0)
    Wav2Vec2ForCTC(cfg).save_pretrained(d)
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(d)
    return d


def tiny_run(d: Path, teacher_source: str) -> Path:
    "A run directory with 6 main and 2 out-of-domain clips, splits.json and a config naming `teacher_source`."
    audio = d/'corpus'/'audio'; audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    utts = []
    for i, n in enumerate(LENGTHS):
        p = audio/f'u{i}.wav'
        sf.write(p, (0.2 * np.sin(np.arange(n) * (0.03 + 0.01 * i)) + 0.01 * rng.standard_normal(n)).astype(np.float32), 16000)
        utts.append(Utterance(f'u{i}', str(p), ['да', 'нет', 'привет мир'][i % 3], n / 16000, f's{i % 3}', 'test'))
    write_manifest(utts[:6], d/'corpus'/'manifest.jsonl')
    write_manifest(utts[6:], d/'corpus'/'ood_manifest.jsonl')
    write_json(d/'splits.json', {'train': ['u0', 'u1'], 'test_folds': {'cluster-0': ['u2', 'u3'], 'cluster-1': ['u4', 'u5']}})
    save_config(study_config('smoke', {'device': 'cpu', 'teacher': {'source': teacher_source, 'eval_batch_size': 3}},
                             sections=['teacher']), d)
    return d


@pytest.fixture
def w2v2_dir(tmp_path):
    return tiny_wav2vec2(tmp_path/'w2v2')


def test_hf_teacher_loads_and_cache_matches_a_fresh_pass(tmp_path, w2v2_dir):
    teacher = load_teacher(str(w2v2_dir))
    model = Wav2Vec2ForCTC.from_pretrained(w2v2_dir).eval()
    processor = Wav2Vec2Processor.from_pretrained(w2v2_dir)
    assert teacher.identity['architecture'] == 'wav2vec2-ctc' and teacher.identity['weights_sha256']
    assert teacher.blank_id == 0 and teacher.vocab[2] == ' ' and teacher.vocab[3:] == list(RU_ALPHABET)
    run = tiny_run(tmp_path/'run', str(w2v2_dir))
    cache_emissions(run, teacher, batch_size=3, progress=False)
    cache = load_cache(run)
    assert cache.ids == [f'u{i}' for i in range(len(LENGTHS))]          # main manifest, then out-of-domain
    expected = model._get_feat_extract_output_lengths(torch.tensor(LENGTHS)).tolist()
    assert [cache.frames(u) for u in cache.ids] == expected
    for u in read_manifest(run/'corpus'/'manifest.jsonl') + read_manifest(run/'corpus'/'ood_manifest.jsonl'):
        mfcc, logprobs = cache.get(u.id)
        assert mfcc.dtype == np.float32 and logprobs.dtype == np.float16
        assert mfcc.shape == (cache.frames(u.id), 13) and logprobs.shape[0] == cache.frames(u.id)  # MFCC frames = teacher frames
        wave = decode_audio(u.audio_filepath)
        assert len(student_mfcc(wave)) <= cache.frames(u.id)               # the MFCC front end is padded up to the teacher
        with torch.no_grad():
            inp = processor(audio=wave, sampling_rate=16000, return_tensors='pt')
            fresh = model(inp.input_values).logits[0].log_softmax(-1).numpy()
        np.testing.assert_allclose(logprobs.astype(np.float32), fresh, atol=2e-2, rtol=1e-2)
        assert cache.text(u.id) == u.text
        agree = (logprobs.astype(np.float32).argmax(-1) == fresh.argmax(-1)).mean()
        assert agree >= 0.9, agree                                         # float16 storage keeps the best path


def test_stale_cache_is_rebuilt(tmp_path, w2v2_dir):
    run = tiny_run(tmp_path/'run', str(w2v2_dir))
    t1 = load_teacher(str(w2v2_dir))
    first = cache_emissions(run, t1, progress=False)
    assert cache_emissions(run, t1, progress=False)['key'] == first['key']
    # another teacher (other weights): detected and rebuilt
    t2 = load_teacher(str(tiny_wav2vec2(tmp_path/'other', seed=1)))
    second = cache_emissions(run, t2, progress=False)
    assert second['key'] != first['key'] and second['teacher']['weights_sha256'] == t2.identity['weights_sha256']
    with torch.no_grad():
        fresh = t2([decode_audio(run/'corpus'/'audio'/'u0.wav')])[0][0].numpy()
    np.testing.assert_allclose(load_cache(run).get('u0')[1].astype(np.float32), fresh, atol=2e-2, rtol=1e-2)
    # another manifest (one utterance fewer, one transcript changed): detected and rebuilt
    man = run/'corpus'/'manifest.jsonl'
    utts = read_manifest(man)[:-1]; utts[0].text = 'новый текст'
    write_manifest(utts, man)
    third = cache_emissions(run, t2, progress=False)
    assert third['key'] != second['key']
    cache = load_cache(run)
    assert 'u5' not in cache and len(cache) == len(LENGTHS) - 1 and cache.text('u0') == 'новый текст'


class Interrupting:
    "A teacher that counts the clips it sees and raises after `limit` batches."
    def __init__(self, teacher, limit=None):
        self.t, self.limit, self.batches, self.clips = teacher, limit, 0, 0
        self.vocab, self.blank_id, self.identity, self.n_frames = teacher.vocab, teacher.blank_id, teacher.identity, teacher.n_frames
        self.device = teacher.device
    def __call__(self, waves):
        if self.limit is not None and self.batches >= self.limit: raise KeyboardInterrupt('simulated kill')
        self.batches += 1; self.clips += len(waves)
        return self.t(waves)


def test_interrupted_build_resumes(tmp_path, w2v2_dir):
    run = tiny_run(tmp_path/'run', str(w2v2_dir))
    teacher = load_teacher(str(w2v2_dir))
    with pytest.raises(KeyboardInterrupt):
        cache_emissions(run, Interrupting(teacher, limit=1), batch_size=3, progress=False)
    assert not (run/'cache'/'index.json').exists() and read_json(run/'cache'/'building.json')['done'] == 3
    with pytest.raises(FileNotFoundError, match='no complete emission cache'):
        load_cache(run)
    again = Interrupting(teacher)
    cache_emissions(run, again, batch_size=3, progress=False)
    assert again.clips == len(LENGTHS) - 3                                   # only the remaining clips were computed
    full = tmp_path/'full'; tiny_run(full, str(w2v2_dir))
    cache_emissions(full, teacher, batch_size=3, progress=False)
    a, b = load_cache(run), load_cache(full)
    for u in a.ids:
        np.testing.assert_array_equal(a.get(u)[0], b.get(u)[0])
        np.testing.assert_allclose(a.get(u)[1].astype(np.float32), b.get(u)[1].astype(np.float32), atol=2e-2)


def test_stage_writes_report_and_reuses_cache(tmp_path, w2v2_dir):
    run = tiny_run(tmp_path/'run', str(w2v2_dir))
    r1 = teacher_stage(run, progress=False)
    assert set(r1['cer']) == {'cluster-0', 'cluster-1', 'ood', 'test (pooled)'} and r1['training'] is None
    assert r1['identity']['source'] == str(w2v2_dir.resolve()) and r1['parameters'] > 0
    assert read_json(run/'teacher'/'teacher.json')['cer'] == r1['cer']
    stamp = (run/'cache'/'index.json').stat().st_mtime_ns
    r2 = teacher_stage(run, progress=False)
    assert (run/'cache'/'index.json').stat().st_mtime_ns == stamp and r2['cer'] == r1['cer']
    cache = load_cache(run)
    assert isinstance(cache, EmissionCache) and cache.ids == [f'u{i}' for i in range(len(LENGTHS))]
    folds = {'cluster-0': ['u2', 'u3'], 'cluster-1': ['u4', 'u5'], 'ood': ['u6', 'u7'], 'test (pooled)': ['u2', 'u3', 'u4', 'u5']}
    for fold, ids in folds.items():                                      # the teacher's CER is cer() of its cached hypotheses
        assert r1['cer'][fold] == round(cer([cache.text(u) for u in ids], [cache_hypothesis(cache, u) for u in ids]), 5), fold


def test_stage_scores_the_real_speech_set_like_the_out_of_domain_set(tmp_path, w2v2_dir):
    "A run with a real-speech test set: the cache holds it after the out-of-domain set and teacher.json reports its CER and WER."
    from asr_kd_nb.emissions import wer
    from asr_kd_nb.teacher import cache_set_ids
    run = tiny_run(tmp_path/'run', str(w2v2_dir))
    ood = read_manifest(run/'corpus'/'ood_manifest.jsonl')
    write_manifest(ood[:1], run/'corpus'/'ood_manifest.jsonl'); write_manifest(ood[1:], run/'corpus'/'real_manifest.jsonl')
    write_json(run/'corpus'/'report.json', {'real_speech': {'present': True, 'reason': '', 'stats': {'utterances': 1}}})
    r = teacher_stage(run, progress=False)
    cache = load_cache(run)
    assert cache_set_ids(cache, 'ood') == ['u6'] and cache_set_ids(cache, 'real') == ['u7']
    assert set(r['cer']) == {'cluster-0', 'cluster-1', 'ood', 'real', 'test (pooled)'} and r['real_utterances'] == 1
    hyp = [cache_hypothesis(cache, 'u7')]
    assert r['cer']['real'] == round(cer([cache.text('u7')], hyp), 5) and r['wer']['real'] == round(wer([cache.text('u7')], hyp), 5)
    assert r['cer']['test (pooled)'] == round(cer([cache.text(u) for u in ('u2', 'u3', 'u4', 'u5')],
                                                  [cache_hypothesis(cache, u) for u in ('u2', 'u3', 'u4', 'u5')]), 5)   # never pooled with it
    assert r['real_speech']['present'] and r['real_speech']['note'].startswith('real-speech test set: 1 recorded')
    (run/'corpus'/'real_manifest.jsonl').unlink()                       # the absent case: rebuilt without it, and said so
    write_json(run/'corpus'/'report.json', {'real_speech': {'present': False, 'reason': 'festvox-ru not installed'}})
    r0 = teacher_stage(run, progress=False)
    assert 'real' not in r0['cer'] and r0['real_utterances'] == 0 and 'festvox-ru not installed' in r0['real_speech']['note']
