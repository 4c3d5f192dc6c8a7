"""Incremental decoding, greedy / beam search / sampling, against transformers' generate()."""
import numpy as np
import pytest

import cyformer
from cyformer import Transformer, TransformerConfig

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from _reference import pad, toy_pairs, trained_marian_model  # noqa: E402

SCORE_ATOL = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MarianMTModel trained briefly on a reversal task, its folder, and our import of it."""
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("marian-trained")
    hf = trained_marian_model(directory, steps=500, seed=0)
    hf.saved_to = str(directory)
    return hf, Transformer.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def sources():
    return [s for s, _ in toy_pairs(np.random.default_rng(5), 7)]


def hf_generate(hf, src, **kw):
    ids, padding = pad(src, hf.config.pad_token_id)
    out = hf.generate(input_ids=ids, attention_mask=(~padding).long(), do_sample=False,
                      return_dict_in_generate=True, output_scores=True, **kw)
    n = kw.get("num_return_sequences", 1)
    seqs = []
    for row in out.sequences.tolist():
        row = row[1:]  # drop the decoder start token
        if hf.config.eos_token_id in row:
            row = row[:row.index(hf.config.eos_token_id) + 1]
        else:
            while row and row[-1] == hf.config.pad_token_id:
                row.pop()
        seqs.append(row)
    scores = out.sequences_scores.tolist() if getattr(out, "sequences_scores", None) is not None else None
    return [seqs[i * n:(i + 1) * n] for i in range(len(src))], scores


def test_incremental_decoding_matches_teacher_forcing():
    for norm_first in (False, True):
        config = TransformerConfig(src_vocab_size=50, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2,
                                   n_decoder_layers=2, max_len=40, norm_first=norm_first)
        model = Transformer(config, seed=1)
        src = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
        tgt = [[1, 4, 5, 6, 7, 8, 9], [1, 3, 3, 3, 3, 3, 3], [1, 7, 8, 9, 10, 11, 12]]
        full = model.forward(src, tgt)
        state = model.start_decoding(src, max_steps=2)  # small: the cache must grow
        for t in range(7):
            step = model.decode_step(state, [s[t] for s in tgt])
            np.testing.assert_allclose(step, full[:, t], atol=1e-5, rtol=1e-5)
        # reordering rows reorders their caches
        state = model.start_decoding(src, max_steps=8)
        for t in range(3):
            model.decode_step(state, [s[t] for s in tgt])
        state.select([2, 0])
        step = model.decode_step(state, [tgt[2][3], tgt[0][3]])
        np.testing.assert_allclose(step, full[[2, 0], 3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("max_length,min_length", [(20, 0), (6, 0), (20, 9)])
def test_greedy_matches_hf(trained, sources, max_length, min_length):
    hf, model = trained
    expected, _ = hf_generate(hf, sources, num_beams=1, max_new_tokens=max_length, min_new_tokens=min_length)
    results = model.generate(sources, max_length=max_length, min_length=min_length)
    assert [r.sequences for r in results] == expected
    assert any(len(set(s[0])) > 2 for s in expected), "the trained model should not be degenerate"


@pytest.mark.parametrize("beam_size", [4, 5])
@pytest.mark.parametrize("length_penalty", [0.6, 1.0, 2.0])
@pytest.mark.parametrize("num_hypotheses", [1, 2])
def test_beam_search_matches_hf(trained, sources, beam_size, length_penalty, num_hypotheses):
    hf, model = trained
    expected, scores = hf_generate(hf, sources, num_beams=beam_size, length_penalty=length_penalty,
                                   num_return_sequences=num_hypotheses, max_new_tokens=20)
    results = model.generate(sources, beam_size=beam_size, length_penalty=length_penalty,
                             num_hypotheses=num_hypotheses, max_length=20)
    assert [r.sequences for r in results] == expected
    ours = [s for r in results for s in r.scores]
    np.testing.assert_allclose(ours, scores, atol=SCORE_ATOL, rtol=0)


def test_beam_search_min_length_and_short_limit(trained, sources):
    hf, model = trained
    for kw in (dict(max_new_tokens=5), dict(max_new_tokens=20, min_new_tokens=12)):
        expected, scores = hf_generate(hf, sources, num_beams=4, num_return_sequences=4, **kw)
        results = model.generate(sources, beam_size=4, num_hypotheses=4, max_length=kw["max_new_tokens"],
                                 min_length=kw.get("min_new_tokens", 0))
        assert [r.sequences for r in results] == expected
        np.testing.assert_allclose([s for r in results for s in r.scores], scores, atol=SCORE_ATOL, rtol=0)


def test_without_forced_eos(tmp_path, sources):
    torch.set_num_threads(1)
    from _reference import marian_model
    hf = marian_model(tmp_path, seed=3, forced_eos=False)
    model = Transformer.from_pretrained(str(tmp_path))
    assert not model.config.forced_eos
    expected, scores = hf_generate(hf, sources, num_beams=4, num_return_sequences=2, max_new_tokens=7)
    results = model.generate(sources, beam_size=4, num_hypotheses=2, max_length=7)
    assert [r.sequences for r in results] == expected
    np.testing.assert_allclose([s for r in results for s in r.scores], scores, atol=SCORE_ATOL, rtol=0)
    greedy, _ = hf_generate(hf, sources, num_beams=1, max_new_tokens=7)
    assert [r.sequences for r in model.generate(sources, max_length=7)] == greedy


@pytest.mark.parametrize("beam_size", [1, 4])
def test_batched_equals_one_by_one_and_threads_agree(trained, sources, beam_size):
    _, model = trained
    batched = model.generate(sources, beam_size=beam_size, num_hypotheses=beam_size, max_length=20)
    for s, r in zip(sources, batched):
        single = model.generate([s], beam_size=beam_size, num_hypotheses=beam_size, max_length=20)[0]
        assert single.sequences == r.sequences
        np.testing.assert_allclose(single.scores, r.scores, atol=1e-5)
    try:
        cyformer.set_num_threads(1)
        one = model.generate(sources, beam_size=beam_size, max_length=20)
        cyformer.set_num_threads(2)
        two = model.generate(sources, beam_size=beam_size, max_length=20)
    finally:
        cyformer.set_num_threads(cyformer.threads.default_num_threads())
    assert [r.sequences for r in one] == [r.sequences for r in two]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_return_attention(trained, sources, beam_size):
    _, model = trained
    results = model.generate(sources, beam_size=beam_size, num_hypotheses=beam_size, max_length=12,
                             return_attention=True)
    per_head = model.generate(sources, beam_size=beam_size, max_length=12, return_attention=True,
                              attention_per_head=True)
    for src, r, h in zip(sources, results, per_head):
        for seq, att in zip(r.sequences, r.attention):
            assert att.shape == (len(seq), len(src))
            np.testing.assert_allclose(att.sum(axis=1), 1.0, atol=1e-5)
        assert h.attention[0].shape == (len(h.sequences[0]), model.config.n_heads, len(src))
        np.testing.assert_allclose(h.attention[0].mean(axis=1), r.attention[0], atol=1e-6)


def test_attention_matches_hf_cross_attentions(trained, sources):
    hf, model = trained
    src = sources[:1]
    r = model.generate(src, max_length=8, return_attention=True, attention_per_head=True)[0]
    seq = r.sequences[0]
    ids = torch.tensor(src)
    dec = torch.tensor([[hf.config.decoder_start_token_id] + seq[:-1]])
    from transformers import MarianMTModel
    eager = MarianMTModel.from_pretrained(hf.saved_to, attn_implementation="eager").eval()
    with torch.no_grad():
        out = eager(input_ids=ids, decoder_input_ids=dec, output_attentions=True)
    last = out.cross_attentions[-1][0].numpy()  # [heads, T, S]
    np.testing.assert_allclose(r.attention[0], last.transpose(1, 0, 2), atol=1e-5)


def test_sampling_is_seeded_and_stays_in_top_k(trained, sources):
    _, model = trained
    a = model.generate(sources, sampling_topk=5, sampling_temperature=1.5, seed=7, max_length=15)
    b = model.generate(sources, sampling_topk=5, sampling_temperature=1.5, seed=7, max_length=15)
    assert [r.sequences for r in a] == [r.sequences for r in b]
    greedy = model.generate(sources, max_length=15)
    assert [r.sequences for r in model.generate(sources, sampling_topk=1, seed=3, max_length=15)] == \
        [r.sequences for r in greedy]
    nucleus = model.generate(sources, sampling_topk=0, sampling_topp=0.9, seed=1, max_length=15)
    assert all(0 < len(r.sequences[0]) <= 15 for r in nucleus)
    pad_id = model.config.pad_id
    assert all(pad_id not in r.sequences[0] for r in a + nucleus)


@pytest.mark.parametrize("options,exc,match", [
    (dict(beam_size=0), ValueError, "beam_size must be >= 1"),
    (dict(beam_size=2, num_hypotheses=3), ValueError, "num_hypotheses=3 exceeds beam_size=2"),
    (dict(min_length=10, max_length=5), ValueError, "min_length=10 exceeds max_length=5"),
    (dict(max_length=1000), ValueError, "exceeds the model's max_len"),
    (dict(max_length=0), ValueError, "max_length must be >= 1"),
    (dict(beam_size=2, sampling_topk=5), ValueError, "needs beam_size=1"),
    (dict(sampling_topp=0.0), ValueError, "sampling_topp"),
    (dict(sampling_temperature=0.0), ValueError, "sampling_temperature"),
    (dict(beam_size=2.5), TypeError, "beam_size must be an int"),
])
def test_bad_options(trained, options, exc, match):
    _, model = trained
    with pytest.raises(exc, match=match):
        model.generate([[3, 4, 0]], **options)


def test_bad_sources(trained):
    _, model = trained
    with pytest.raises(ValueError, match="empty batch"):
        model.generate([])
    with pytest.raises(ValueError, match="is empty"):
        model.generate([[3], []])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([[3, 999]])


def test_decoding_caches_are_reused_and_results_unchanged(trained, sources):
    # generate keeps its self-attention caches for the next call (the model's CachePool), so a
    # call over buffers dirty from another call (other shapes, beams) decodes as over fresh ones
    _, model = trained
    model.release_decoding_memory()
    fresh = [model.generate(sources, beam_size=k, num_hypotheses=k, max_length=20, return_scores=True)
             for k in (1, 3)]
    model.release_decoding_memory()
    assert model.release_decoding_memory() == 0
    model.generate(sources[:2], beam_size=4, max_length=25)   # leaves larger, dirty buffers
    assert model._decoding_pool().nbytes > 0
    for k, want in zip((1, 3), fresh):
        got = model.generate(sources, beam_size=k, num_hypotheses=k, max_length=20, return_scores=True)
        assert [r.sequences for r in got] == [r.sequences for r in want]
        assert [r.scores for r in got] == [r.scores for r in want]
    pool = model._decoding_pool()
    assert len(pool._free) <= 2 * model.config.n_decoder_layers   # one call's caches at most
    assert model.release_decoding_memory() > 0 and pool.nbytes == 0
