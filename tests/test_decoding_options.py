"""Decoding options (CTranslate2's names, Hugging Face's aliases) against transformers' generate().

Every option HF also has is checked token for token (and beam scores) against HF on a small
seeded Marian model trained briefly on a reversal task; the others (return_alternatives,
max_input_length, generate_tokens) are checked against their definition.
"""
import numpy as np
import pytest

from cyformer import Transformer

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from _reference import pad, toy_pairs, trained_marian_model  # noqa: E402

SCORE_ATOL = 1e-4
MAX_NEW = 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("marian-trained-options")
    hf = trained_marian_model(directory, steps=500, seed=0)
    return hf, Transformer.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def sources():
    return [s for s, _ in toy_pairs(np.random.default_rng(5), 7)]


def _strip(row, eos, pad_id):
    if eos in row:
        return row[:row.index(eos) + 1]
    while row and row[-1] == pad_id:
        row.pop()
    return row


def hf_generate(hf, src, prefix=None, **kw):
    """HF's n-best lists (and beam scores) for ``src``; with ``prefix`` (one list of ids for
    every source), ``decoder_input_ids = [start] + prefix``. Sequences drop the start token."""
    ids, padding = pad(src, hf.config.pad_token_id)
    if prefix is not None:
        start = hf.config.decoder_start_token_id
        kw["decoder_input_ids"] = torch.tensor([[start] + list(prefix)] * len(src))
    kw.setdefault("bad_words_ids", [[hf.config.pad_token_id]])   # the checkpoint's own setting
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=(~padding).long(), do_sample=False,
                          return_dict_in_generate=True, output_scores=True, **kw)
    n = kw.get("num_return_sequences", 1)
    seqs = [_strip(row[1:], hf.config.eos_token_id, hf.config.pad_token_id) for row in out.sequences.tolist()]
    scores = out.sequences_scores.tolist() if getattr(out, "sequences_scores", None) is not None else None
    return [seqs[i * n:(i + 1) * n] for i in range(len(src))], scores


def assert_same_as_hf(model, hf, sources, ours: dict, theirs: dict, beam: int, n_best: int = 1):
    expected, scores = hf_generate(hf, sources, num_beams=beam, num_return_sequences=n_best,
                                   max_new_tokens=MAX_NEW, **theirs)
    results = model.generate(sources, beam_size=beam, num_hypotheses=n_best, max_length=MAX_NEW, **ours)
    assert [r.sequences for r in results] == expected
    if beam > 1:
        np.testing.assert_allclose([s for r in results for s in r.scores], scores, atol=SCORE_ATOL, rtol=0)
    return results


def plain(model, sources, beam):
    return [r.sequences for r in model.generate(sources, beam_size=beam, max_length=MAX_NEW)]


# -- options HF has too ------------------------------------------------------------------------------
@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("penalty", [1.5, 3.0, 0.7])
def test_repetition_penalty_matches_hf(trained, sources, beam, penalty):
    hf, model = trained
    results = assert_same_as_hf(model, hf, sources, dict(repetition_penalty=penalty),
                                dict(repetition_penalty=penalty), beam, n_best=min(beam, 2))
    if penalty == 3.0:
        assert [[r.sequences[0]] for r in results] != [[s[0]] for s in plain(model, sources, beam)], \
            "the penalty should change some output"


@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_no_repeat_ngram_size_matches_hf(trained, sources, beam, size):
    hf, model = trained
    results = assert_same_as_hf(model, hf, sources, dict(no_repeat_ngram_size=size),
                                dict(no_repeat_ngram_size=size), beam, n_best=min(beam, 2))
    for r in results:
        seq = [model.config.decoder_start_id] + r.sequences[0]
        grams = [tuple(seq[i:i + size]) for i in range(len(seq) - size + 1)]
        assert len(grams) == len(set(grams))
    if size == 1:
        assert [r.sequences[0] for r in results] != [s[0] for s in plain(model, sources, beam)]


def _frequent_outputs(model, sources):
    """A token and a two-token sequence that the unconstrained greedy outputs contain."""
    outs = [r.sequences[0] for r in model.generate(sources, max_length=MAX_NEW)]
    counts = np.bincount([t for o in outs for t in o[:-1]])
    single = int(counts.argmax())
    pair = next(o[1:3] for o in outs if len(o) > 3 and single not in o[1:3])
    return single, pair


@pytest.mark.parametrize("beam", [1, 4])
def test_suppress_sequences_matches_hf_bad_words_ids(trained, sources, beam):
    hf, model = trained
    single, pair = _frequent_outputs(model, sources)
    banned = [[single], pair]
    results = assert_same_as_hf(model, hf, sources, dict(suppress_sequences=banned),
                                dict(bad_words_ids=[[hf.config.pad_token_id]] + banned), beam, n_best=min(beam, 2))
    for r in results:
        for s in r.sequences:
            assert single not in s
            assert all(s[i:i + 2] != pair for i in range(len(s) - 1))
    # HF's name for it
    again = model.generate(sources, beam_size=beam, max_length=MAX_NEW, bad_words_ids=banned)
    assert [r.sequences[0] for r in again] == [r.sequences[0] for r in results]


@pytest.mark.parametrize("beam", [1, 4])
def test_disable_unk_matches_hf_suppress_tokens(trained, sources, beam):
    hf, model = trained
    unk, _ = _frequent_outputs(model, sources)   # the toy vocabulary has no <unk>: play one
    results = assert_same_as_hf(model, hf, sources, dict(disable_unk=True, unk_id=unk),
                                dict(suppress_tokens=[unk]), beam)
    assert all(unk not in r.sequences[0] for r in results)
    with pytest.raises(ValueError, match="pass unk_id="):
        model.generate(sources, disable_unk=True)
    model.config.unk_id = unk   # a config that knows its unknown token
    try:
        from_config = model.generate(sources, beam_size=beam, max_length=MAX_NEW, disable_unk=True)
    finally:
        model.config.unk_id = None
    assert [r.sequences for r in from_config] == [r.sequences for r in results]


@pytest.mark.parametrize("beam,n_best", [(1, 1), (4, 1), (4, 3)])
def test_target_prefix_matches_hf_decoder_input_ids(trained, sources, beam, n_best):
    hf, model = trained
    free = plain(model, sources, 1)
    # per sentence: the model's own start, a wrong first token, a longer prefix, none
    prefixes = [free[0][0][:1], [7], free[2][0][:3], None, [3, 3], free[5][0][:2], [11, 12, 13, 14]]
    results = model.generate(sources, beam_size=beam, num_hypotheses=n_best, max_length=MAX_NEW,
                             target_prefix=prefixes)
    for s, p, r in zip(sources, prefixes, results):
        want, scores = hf_generate(hf, [s], prefix=p or [], num_beams=beam, num_return_sequences=n_best,
                                   max_new_tokens=MAX_NEW)
        assert r.sequences == want[0]
        assert all(seq[:len(p or [])] == (p or []) for seq in r.sequences)
        if beam > 1:
            np.testing.assert_allclose(r.scores, scores, atol=SCORE_ATOL, rtol=0)
    assert results[3].sequences == model.generate([sources[3]], beam_size=beam, num_hypotheses=n_best,
                                                  max_length=MAX_NEW)[0].sequences


@pytest.mark.parametrize("beam", [1, 4])
def test_target_prefix_with_min_and_max_length_matches_hf(trained, sources, beam):
    hf, model = trained
    for max_new, min_new in ((4, 0), (MAX_NEW, 12)):
        prefix = [5, 9]
        results = model.generate(sources, beam_size=beam, max_length=max_new, min_length=min_new,
                                 target_prefix=[prefix] * len(sources))
        want, scores = hf_generate(hf, sources, prefix=prefix, num_beams=beam, max_new_tokens=max_new,
                                   min_new_tokens=min_new)
        assert [r.sequences for r in results] == want
        assert all(min_new < len(r.sequences[0]) - 2 <= max_new for r in results)
        if beam > 1:
            np.testing.assert_allclose([r.scores[0] for r in results], scores, atol=SCORE_ATOL, rtol=0)


@pytest.mark.parametrize("beam", [1, 4])
def test_options_together_match_hf(trained, sources, beam):
    hf, model = trained
    single, pair = _frequent_outputs(model, sources)
    prefix = [4]
    results = model.generate(sources, beam_size=beam, max_length=MAX_NEW, target_prefix=[prefix] * len(sources),
                             repetition_penalty=1.4, no_repeat_ngram_size=2, suppress_sequences=[pair],
                             disable_unk=True, unk_id=single)
    want, scores = hf_generate(hf, sources, prefix=prefix, num_beams=beam, max_new_tokens=MAX_NEW,
                               repetition_penalty=1.4, no_repeat_ngram_size=2, suppress_tokens=[single],
                               bad_words_ids=[[hf.config.pad_token_id], pair])
    assert [r.sequences for r in results] == want
    if beam > 1:
        np.testing.assert_allclose([r.scores[0] for r in results], scores, atol=SCORE_ATOL, rtol=0)


def test_prefix_with_sampling_and_attention(trained, sources):
    _, model = trained
    prefixes = [[6, 7]] * len(sources)
    a = model.generate(sources, sampling_topk=5, seed=3, max_length=10, target_prefix=prefixes,
                       return_attention=True)
    b = model.generate(sources, sampling_topk=5, seed=3, max_length=10, target_prefix=prefixes)
    assert [r.sequences for r in a] == [r.sequences for r in b]
    for s, r in zip(sources, a):
        assert r.sequences[0][:2] == [6, 7] and 2 < len(r.sequences[0]) <= 12
        assert r.attention[0].shape == (len(r.sequences[0]), len(s))
    beam = model.generate(sources, beam_size=3, max_length=10, target_prefix=prefixes, return_attention=True)
    assert all(r.attention[0].shape == (len(r.sequences[0]), len(s)) for s, r in zip(sources, beam))


def test_prefix_near_max_len_is_clipped_or_refused(trained, sources):
    _, model = trained
    max_len = model.config.max_len
    long_prefix = [5] * (max_len - 2)
    r = model.generate(sources[:1], max_length=10, target_prefix=[long_prefix])[0]
    assert r.sequences[0][:max_len - 2] == long_prefix and len(r.sequences[0]) <= max_len
    with pytest.raises(ValueError, match="no room"):
        model.generate(sources[:1], target_prefix=[[5] * max_len])


# -- options HF does not have ------------------------------------------------------------------------
def _next_logprobs(model, src, prefix):
    """log p(next token | src, start + prefix) by teacher forcing, with pad and EOS masked."""
    c = model.config
    logits = model.forward([src], [[c.decoder_start_id] + prefix])[0, -1].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    logp[[c.pad_id, c.eos_id]] = -np.inf
    return logp


def _sequence_logprob(model, src, seq, start):
    """Sum of log p over seq[start:] by teacher forcing."""
    c = model.config
    logits = model.forward([src], [[c.decoder_start_id] + seq[:-1]])[0].astype(np.float64)
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    return float(sum(logp[t, seq[t]] for t in range(start, len(seq))))


@pytest.mark.parametrize("beam", [1, 2])
def test_return_alternatives_at_the_first_free_position(trained, sources, beam):
    _, model = trained
    free = plain(model, sources, 1)
    prefixes = [free[0][0][:2], None, [8]]
    srcs = sources[:3]
    results = model.generate(srcs, beam_size=beam, num_hypotheses=3, max_length=MAX_NEW,
                             target_prefix=prefixes, return_alternatives=True)
    for s, p, r in zip(srcs, prefixes, results):
        p = p or []
        assert len(r.sequences) == 3
        logp = _next_logprobs(model, s, p)
        top = list(np.argsort(-logp, kind="stable")[:3])
        assert [seq[len(p)] for seq in r.sequences] == top          # most likely first, EOS excluded
        for seq, score in zip(r.sequences, r.scores):
            assert seq[:len(p)] == p
            # each alternative is continued by the search the options ask for
            cont = model.generate([s], beam_size=beam, max_length=MAX_NEW - 1, target_prefix=[p + [seq[len(p)]]])
            assert cont[0].sequences[0] == seq
            n = len(seq) - len(p)
            if seq[-1] == model.config.eos_id:   # not cut by the length limit (forced EOS scores 0)
                np.testing.assert_allclose(score, _sequence_logprob(model, s, seq, len(p)) / n, atol=1e-4)


def test_return_alternatives_options(trained, sources):
    _, model = trained
    many = model.generate(sources[:2], num_hypotheses=6, return_alternatives=True, max_length=MAX_NEW)
    assert all(len(r.sequences) == 6 and len({s[0] for s in r.sequences}) == 6 for r in many)
    likely = model.generate(sources[:2], num_hypotheses=6, return_alternatives=True, max_length=MAX_NEW,
                            min_alternative_expansion_prob=0.2)
    for s, r in zip(sources, likely):
        probs = np.exp(_next_logprobs(model, s, []))
        assert len(r.sequences) == int((probs >= 0.2).sum())
        assert all(probs[seq[0]] >= 0.2 for seq in r.sequences)
    # one token to generate: the alternatives are the whole continuation
    one = model.generate(sources[:2], num_hypotheses=3, return_alternatives=True, max_length=1,
                         target_prefix=[[4, 5], None], return_attention=True)
    for r, p in zip(one, ([4, 5], [])):
        assert all(len(seq) == len(p) + 1 and seq[:len(p)] == p for seq in r.sequences)
        assert all(a.shape[0] == len(seq) for a, seq in zip(r.attention, r.sequences))
    with_attn = model.generate(sources[:2], num_hypotheses=2, return_alternatives=True, max_length=8,
                               return_attention=True, target_prefix=[[4], [4]])
    for s, r in zip(sources, with_attn):
        assert all(a.shape == (len(seq), len(s)) for a, seq in zip(r.attention, r.sequences))


def test_max_input_length_truncates_keeping_eos(trained, sources):
    _, model = trained
    eos = model.config.eos_id
    long = [s for s in sources if len(s) > 5]
    assert long
    cut = model.generate(long, max_length=MAX_NEW, max_input_length=5)
    by_hand = model.generate([s[:4] + [eos] for s in long], max_length=MAX_NEW)
    assert [r.sequences for r in cut] == [r.sequences for r in by_hand]
    no_eos = [s[:-1] for s in long]
    assert [r.sequences for r in model.generate(no_eos, max_length=MAX_NEW, max_input_length=3)] == \
        [r.sequences for r in model.generate([s[:3] for s in no_eos], max_length=MAX_NEW)]
    # a padded array with lengths is cut the same way
    width = max(map(len, long))
    arr = np.full((len(long), width), 0, dtype=np.int64)
    for i, s in enumerate(long):
        arr[i, :len(s)] = s
    got = model.generate(arr, [len(s) for s in long], max_length=MAX_NEW, max_input_length=5)
    assert [r.sequences for r in got] == [r.sequences for r in by_hand]
    # 0 / None: nothing is cut; the default (1024) leaves these sources alone
    full = [r.sequences for r in model.generate(long, max_length=MAX_NEW)]
    for off in (0, None):
        assert [r.sequences for r in model.generate(long, max_length=MAX_NEW, max_input_length=off)] == full
    too_long = [[5] * (model.config.max_len + 3)]
    with pytest.raises(ValueError, match="more than max_len"):
        model.generate(too_long, max_input_length=0)
    with pytest.raises(ValueError, match="more than max_len"):
        model.generate(too_long)   # 1024 is above this model's max_len: the model's limit stands
    assert model.generate(too_long, max_input_length=model.config.max_len, max_length=3)


# -- Hugging Face's names ----------------------------------------------------------------------------
def test_hugging_face_names(trained, sources):
    _, model = trained
    ours = model.generate(sources, beam_size=4, max_length=12, min_length=3, num_hypotheses=2)
    theirs = model.generate(sources, num_beams=4, max_new_tokens=12, min_new_tokens=3, num_return_sequences=2)
    assert [r.sequences for r in ours] == [r.sequences for r in theirs]
    sampled = model.generate(sources, do_sample=True, seed=4, max_length=12)
    assert [r.sequences for r in sampled] == \
        [r.sequences for r in model.generate(sources, sampling_topk=50, seed=4, max_length=12)]
    custom = model.generate(sources, do_sample=True, top_k=5, top_p=0.9, temperature=0.7, seed=4, max_length=12)
    assert [r.sequences for r in custom] == [r.sequences for r in model.generate(
        sources, sampling_topk=5, sampling_topp=0.9, sampling_temperature=0.7, seed=4, max_length=12)]
    # the same value under both names is fine
    model.generate(sources[:1], beam_size=2, num_beams=2, max_length=5)


@pytest.mark.parametrize("options,exc,match", [
    (dict(num_beams=2, beam_size=3), ValueError, "num_beams=2 and beam_size=3 name the same option"),
    (dict(max_new_tokens=5, max_length=6), ValueError, "name the same option"),
    (dict(bad_words_ids=[[3]], suppress_sequences=[[4]]), ValueError, "name the same option"),
    (dict(top_k=5), ValueError, "need do_sample=True"),
    (dict(do_sample=False, sampling_topk=5), ValueError, "do_sample=False contradicts"),
    (dict(do_sample="yes"), TypeError, "do_sample must be a bool"),
    (dict(beams=2), TypeError, "unexpected keyword argument 'beams'"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty must be > 0"),
    (dict(repetition_penalty="high"), TypeError, "repetition_penalty must be a finite number"),
    (dict(no_repeat_ngram_size=-1), ValueError, "no_repeat_ngram_size must be >= 0"),
    (dict(no_repeat_ngram_size=1.5), TypeError, "no_repeat_ngram_size must be an int"),
    (dict(suppress_sequences=[[]]), ValueError, r"suppress_sequences\[0\] is empty"),
    (dict(suppress_sequences=[[999]]), ValueError, "outside the target vocabulary"),
    (dict(suppress_sequences=["the"]), TypeError, "not text"),
    (dict(suppress_sequences=5), TypeError, "suppress_sequences must be a list"),
    (dict(target_prefix=[[1], [2]]), ValueError, "target_prefix has 2 entries for 1 source"),
    (dict(target_prefix=[[-1]]), ValueError, "outside the target vocabulary"),
    (dict(target_prefix=[[1.5]]), TypeError, "integer token ids"),
    (dict(disable_unk=1), TypeError, "disable_unk must be a bool"),
    (dict(unk_id=10 ** 6, disable_unk=True), ValueError, "unk_id=1000000 is outside"),
    (dict(return_alternatives="no"), TypeError, "return_alternatives must be a bool"),
    (dict(return_alternatives=True, min_alternative_expansion_prob=2.0), ValueError,
     "min_alternative_expansion_prob must be in"),
    (dict(max_input_length=-1), ValueError, "max_input_length must be >= 0"),
    (dict(max_input_length=2.5), TypeError, "max_input_length must be an int"),
])
def test_bad_options(trained, options, exc, match):
    _, model = trained
    with pytest.raises(exc, match=match):
        model.generate([[3, 4, 0]], **options)


# -- token by token --------------------------------------------------------------------------------
def test_generate_tokens_streams_the_greedy_result(trained, sources):
    _, model = trained
    for s in sources[:3]:
        want = model.generate([s], max_length=MAX_NEW)[0]
        steps = list(model.generate_tokens(s, max_length=MAX_NEW))
        assert [t.token_id for t in steps] == want.sequences[0]
        assert [t.step for t in steps] == list(range(len(steps)))
        assert [t.is_last for t in steps] == [False] * (len(steps) - 1) + [True]
        np.testing.assert_allclose(sum(t.log_prob for t in steps) / len(steps), want.scores[0], atol=1e-5)
    # with a prefix (not streamed), options and sampling
    kw = dict(target_prefix=[4, 5], repetition_penalty=1.3, no_repeat_ngram_size=2, max_length=MAX_NEW)
    want = model.generate([sources[0]], **dict(kw, target_prefix=[[4, 5]]))[0].sequences[0]
    assert [4, 5] + [t.token_id for t in model.generate_tokens(sources[0], **kw)] == want
    sampled = model.generate([sources[1]], sampling_topk=8, seed=9, max_length=MAX_NEW)[0].sequences[0]
    assert [t.token_id for t in model.generate_tokens(sources[1], sampling_topk=8, seed=9,
                                                      max_length=MAX_NEW)] == sampled
    short = list(model.generate_tokens(sources[0], max_length=2))
    assert len(short) <= 2 and short[-1].is_last


def test_generate_tokens_stopped_early_leaves_the_model_usable(trained, sources):
    _, model = trained
    want = [r.sequences for r in model.generate(sources, beam_size=3, max_length=MAX_NEW)]
    stream = model.generate_tokens(sources[0], max_length=MAX_NEW)
    first = next(stream)
    for t in model.generate_tokens(sources[1], max_length=MAX_NEW):
        break
    # another decoding in between, and the first stream resumes where it was
    assert [r.sequences for r in model.generate(sources, beam_size=3, max_length=MAX_NEW)] == want
    rest = [t.token_id for t in stream]
    assert [first.token_id] + rest == model.generate([sources[0]], max_length=MAX_NEW)[0].sequences[0]
    del stream


@pytest.mark.parametrize("options,match", [
    (dict(beam_size=2), "beam_size=2 is not supported"),
    (dict(num_hypotheses=2, sampling_topk=3), "num_hypotheses=2"),
    (dict(return_alternatives=True), "return_alternatives"),
])
def test_generate_tokens_refuses_what_it_cannot_stream(trained, sources, options, match):
    _, model = trained
    with pytest.raises(ValueError, match=match):
        model.generate_tokens(sources[0], **options)
    with pytest.raises(ValueError, match="one sentence"):
        model.generate_tokens(sources[:2])


# -- Translator --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    from _reference import marian_model, sentencepiece_folder
    from cyformer import Translator
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("marian-spm-options")
    vocab = sentencepiece_folder(str(directory))
    marian_model(directory, vocab=len(vocab), seed=2)
    return Translator.from_pretrained(str(directory))


def test_translator_options(translator):
    from _reference import toy_sentences
    texts = toy_sentences(np.random.default_rng(8), 5)
    tok = translator.tokenizer
    plain_out = translator.translate(texts, max_length=10)
    prefix = ["the cat", None, "", "dog", "red"]
    out = translator.translate_batch(texts, max_length=10, beam_size=2, target_prefix=prefix, max_batch_size=2)
    for p, r, text in zip(prefix, out, texts):
        ids = tok.encode([p], side="target", add_eos=False)[0] if p else []
        assert r.sequences[0][:len(ids)] == ids
        one = translator.model.generate(tok.encode([text]), max_length=10, beam_size=2, target_prefix=[ids])
        assert one[0].sequences == r.sequences
    assert translator.translate("the cat", target_prefix="the", max_length=10).startswith("the")
    # disable_unk takes the tokenizer's unknown id; suppress_sequences may be text
    no_unk = translator.translate_batch(texts, max_length=10, disable_unk=True)
    assert all(tok.unk_id not in r.sequences[0] for r in no_unk)
    first_word = plain_out[0].split()[0] if plain_out[0].split() else None
    if first_word:
        banned = tok.encode([first_word], side="target", add_eos=False)[0]
        res = translator.translate_batch(texts[:1], max_length=10, suppress_sequences=[first_word])
        seq = res[0].sequences[0]
        assert all(seq[i:i + len(banned)] != banned for i in range(len(seq)))
    with pytest.raises(ValueError, match="target_prefix has 1 entries for 5 text"):
        translator.translate(texts, target_prefix=["a"])


def test_translator_generate_tokens_streams_text(translator):
    from _reference import toy_sentences
    for text in toy_sentences(np.random.default_rng(9), 4):
        want = translator.translate(text, max_length=12)
        steps = list(translator.generate_tokens(text, max_length=12))
        assert "".join(s.text for s in steps) == want
        assert steps[-1].is_last and all(isinstance(s.text, str) for s in steps)
        ids = translator.translate_batch([text], max_length=12)[0].sequences[0]
        assert [s.token_id for s in steps] == ids
    with_prefix = list(translator.generate_tokens("the cat runs", target_prefix="the", max_length=12))
    full = translator.translate("the cat runs", target_prefix="the", max_length=12)
    start = translator.tokenizer.decode([translator.tokenizer.encode(["the"], side="target", add_eos=False)[0]])[0]
    assert start + "".join(s.text for s in with_prefix) == full
    assert list(translator.generate_tokens("   ")) == []
    with pytest.raises(TypeError, match="one text"):
        translator.generate_tokens(["a", "b"])
