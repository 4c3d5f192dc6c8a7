"""cyformer.TextEncoder: text in, vectors and labels out, against sentence-transformers and
transformers on the same seeded weights and the same WordPiece tokenizer.json (built here);
sentence-transformers folders in both layouts; truncation, batching, bad input."""
import json
import os
import shutil
import warnings

import numpy as np
import pytest

from cyformer import CheckpointError, Encoder, EncoderConfig, TextEncoder
from cyformer.text_encoder import Classification, TokenClassification, TruncationWarning

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from _reference import TEXT_WORDS, bert_text_folder, sentence_transformer  # noqa: E402

# SentenceTransformer.encode vs TextEncoder.embed: 1 - cosine, and elementwise (float32 states)
COSINE_TOL = 1e-5
EMBED_ATOL = 1e-5
LOGITS_ATOL = 1e-4

BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40, type_vocab_size=2)

TEXTS = ["The cat sat on the mat.", "a dog", "Red, blue and green cars run very fast under the big tree!",
         "night", "the happy birds sits in a small house and the sad dog runs", "Zebras? xyz 42",
         "good day", "bad bad bad night and day"]


def _sentences(n, seed=0, lo=1, hi=30):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(TEXT_WORDS, int(rng.integers(lo, hi)))) for _ in range(n)]


def _cosine_gap(a, b):
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(np.max(1 - cos))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text") / "bert"
    bert_text_folder(folder, BERT, seed=1)
    return folder


def _st_folder(tmp_path, bert_dir, **kw):
    st = sentence_transformer(bert_dir, **kw)
    folder = tmp_path / "st"
    st.save(str(folder))
    return st, folder


@pytest.mark.parametrize("pooling,normalize", [("mean", False), ("mean", True), ("cls", False), ("max", True),
                                               ("mean_sqrt_len_tokens", False), ("weightedmean", False),
                                               ("lasttoken", True), (["cls", "mean"], False)])
def test_sentence_transformers_folder_matches_encode(tmp_path, bert_dir, pooling, normalize):
    st, folder = _st_folder(tmp_path, bert_dir, pooling=pooling, normalize=normalize)
    enc = TextEncoder.from_pretrained(str(folder))
    texts = TEXTS + _sentences(20, seed=2)
    want = st.encode(texts, batch_size=5, convert_to_numpy=True)
    got = enc.embed(texts, batch_size=3)
    assert got.shape == want.shape and got.dtype == np.float32
    assert _cosine_gap(got, want) < COSINE_TOL
    np.testing.assert_allclose(got, want, atol=EMBED_ATOL, rtol=0)
    # the Encoder alone loads the folder too, with the same pooling defaults
    model = Encoder.from_pretrained(str(folder))
    modes = [pooling] if isinstance(pooling, str) else pooling
    assert model.config.extra["sentence_transformers"]["pooling"] == modes
    assert model.config.extra["sentence_transformers"]["normalize"] is normalize
    ids = enc.tokenize(texts[:3])
    np.testing.assert_allclose(model.embed(ids), got[:3], atol=1e-6, rtol=0)


def test_legacy_layout_0_transformer(tmp_path, bert_dir):
    """sentence-transformers 2.x folders: the model in 0_Transformer/, pooling_mode_* flags,
    sentence_bert_config.json with max_seq_length and do_lower_case."""
    st, folder = _st_folder(tmp_path, bert_dir, pooling="max", normalize=True)
    legacy = tmp_path / "legacy"
    (legacy / "0_Transformer").mkdir(parents=True)
    for name in os.listdir(folder):
        if os.path.isfile(folder / name) and name not in ("modules.json", "config_sentence_transformers.json",
                                                          "README.md"):
            shutil.copy(folder / name, legacy / "0_Transformer" / name)
    (legacy / "0_Transformer" / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 12, "do_lower_case": True}))
    (legacy / "1_Pooling").mkdir()
    (legacy / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
         "pooling_mode_max_tokens": True, "pooling_mode_mean_sqrt_len_tokens": False}))
    (legacy / "2_Normalize").mkdir()
    (legacy / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    from sentence_transformers import SentenceTransformer
    ref = SentenceTransformer(str(legacy), device="cpu")
    assert ref.max_seq_length == 12
    enc = TextEncoder.from_pretrained(str(legacy))
    assert enc.max_len == 12 and enc.lowercase
    texts = TEXTS
    with pytest.warns(TruncationWarning, match=r"3 of 8 text\(s\) were longer than max_len=12"):
        got = enc.embed(texts)
    want = ref.encode(texts, convert_to_numpy=True)
    assert _cosine_gap(got, want) < COSINE_TOL


def test_truncation_is_counted_once_and_matches_sentence_transformers(tmp_path, bert_dir):
    st, folder = _st_folder(tmp_path, bert_dir, max_seq_length=16)
    enc = TextEncoder.from_pretrained(str(folder))
    assert enc.max_len == 16
    texts = _sentences(30, seed=5, lo=1, hi=40)
    n_long = sum(len(st.tokenizer(t)["input_ids"]) > 16 for t in texts)
    assert 0 < n_long < len(texts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = enc.embed(texts, batch_size=7)
    cut = [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(cut) == 1 and f"{n_long} of 30 text(s)" in str(cut[0].message)
    with pytest.warns(TruncationWarning):
        ids = enc.tokenize(texts)
    assert all(len(s) <= 16 and s[-1] == enc.tokenizer.token_to_id("[SEP]") for s in ids)
    np.testing.assert_allclose(got, st.encode(texts, convert_to_numpy=True), atol=EMBED_ATOL, rtol=0)


def test_batches_are_length_sorted_and_results_in_input_order(bert_dir):
    enc = TextEncoder.from_pretrained(str(bert_dir))
    texts = _sentences(37, seed=7)
    one_by_one = np.stack([enc.embed(t) for t in texts])
    for batch_size in (1, 4, 64):
        np.testing.assert_allclose(enc.embed(texts, batch_size=batch_size), one_by_one, atol=2e-6, rtol=0)
    assert enc.embed(texts[3]).shape == (32,)
    assert enc.embed([]).shape == (0, 32)


def test_bert_folder_mean_pooling_against_transformers(bert_dir):
    """A plain BertModel folder: mean pooling (no sentence-transformers config), token types of
    text pairs passed through from the tokenizer."""
    from transformers import BertModel, BertTokenizerFast
    ref = BertModel.from_pretrained(str(bert_dir)).eval()
    tok = BertTokenizerFast.from_pretrained(str(bert_dir))
    enc = TextEncoder.from_pretrained(str(bert_dir))
    assert enc.max_len == 40
    pairs = [("the cat sat", "on the mat"), ("a dog runs fast", "night"), ("good", "bad day and night")]
    batch = tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True, return_tensors="pt")
    assert batch["token_type_ids"].any()
    with torch.no_grad():
        h = ref(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    want = ((h * m).sum(1) / m.sum(1)).numpy()
    got = enc.embed(pairs)
    np.testing.assert_allclose(got, want, atol=EMBED_ATOL, rtol=0)
    # the second segment's type matters: without it the vectors differ
    no_types = enc.model.embed(enc.tokenize(pairs))
    assert np.abs(no_types - got).max() > 1e-3
    np.testing.assert_allclose(enc.embed(pairs, pooling="cls", normalize=True),
                               torch.nn.functional.normalize(h[:, 0], dim=-1).numpy(), atol=EMBED_ATOL, rtol=0)


def test_prompts_as_sentence_transformers(tmp_path, bert_dir):
    st, folder = _st_folder(tmp_path, bert_dir, normalize=True)
    cfg_path = folder / "config_sentence_transformers.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prompts"] = {"query": "query: ", "document": ""}
    cfg["default_prompt_name"] = "query"
    cfg_path.write_text(json.dumps(cfg))
    from sentence_transformers import SentenceTransformer
    ref = SentenceTransformer(str(folder), device="cpu")
    enc = TextEncoder.from_pretrained(str(folder))
    np.testing.assert_allclose(enc.embed(TEXTS), ref.encode(TEXTS), atol=EMBED_ATOL, rtol=0)
    np.testing.assert_allclose(enc.embed(TEXTS, prompt_name="document"),
                               ref.encode(TEXTS, prompt_name="document"), atol=EMBED_ATOL, rtol=0)
    np.testing.assert_allclose(enc.embed(TEXTS, prompt="a red "), ref.encode(TEXTS, prompt="a red "),
                               atol=EMBED_ATOL, rtol=0)
    # include_prompt=False: the prompt's tokens are left out of the pooling
    pool_cfg = folder / "1_Pooling" / "config.json"
    pc = json.loads(pool_cfg.read_text())
    pc["include_prompt"] = False
    pool_cfg.write_text(json.dumps(pc))
    ref = SentenceTransformer(str(folder), device="cpu")
    enc = TextEncoder.from_pretrained(str(folder))
    np.testing.assert_allclose(enc.embed(TEXTS), ref.encode(TEXTS), atol=EMBED_ATOL, rtol=0)
    with pytest.raises(ValueError, match="prompt_name 'passage' is not one of this model's prompts"):
        enc.embed(TEXTS, prompt_name="passage")
    with pytest.raises(ValueError, match="not both"):
        enc.embed(TEXTS, prompt="x", prompt_name="query")


SEQ_LABELS = {0: "negative", 1: "positive", 2: "neutral"}
TOKEN_LABELS = {0: "O", 1: "B-ANIMAL", 2: "I-ANIMAL", 3: "B-COLOUR"}


@pytest.fixture(scope="module")
def seq_dir(tmp_path_factory):
    from transformers import BertForSequenceClassification
    folder = tmp_path_factory.mktemp("text") / "seq"
    model, _ = bert_text_folder(folder, dict(BERT, num_labels=3, id2label=SEQ_LABELS,
                                             label2id={v: k for k, v in SEQ_LABELS.items()}),
                                seed=4, model_class=BertForSequenceClassification)
    return folder, model


def test_classify_sequence_head_against_transformers(seq_dir):
    from transformers import BertTokenizerFast, pipeline
    folder, ref = seq_dir
    enc = TextEncoder.from_pretrained(str(folder))
    tok = BertTokenizerFast.from_pretrained(str(folder))
    texts = TEXTS + _sentences(9, seed=9)
    with torch.no_grad():
        logits = ref(**tok(texts, padding=True, return_tensors="pt")).logits
    want = torch.softmax(logits, -1).numpy()
    probs = enc.predict_proba(texts, batch_size=4)
    assert probs.shape == (len(texts), 3)
    np.testing.assert_allclose(probs, want, atol=1e-5, rtol=0)
    out = enc.classify(texts, batch_size=4)
    assert all(isinstance(r, Classification) for r in out)
    assert [r.label for r in out] == [SEQ_LABELS[i] for i in want.argmax(1)]
    np.testing.assert_allclose([r.score for r in out], want.max(1), atol=1e-5)
    assert enc.classify(texts[0]) == out[0]
    # what transformers' text-classification pipeline answers
    pipe = pipeline("text-classification", model=ref, tokenizer=tok, device="cpu")
    for r, p in zip(out, pipe(texts)):
        assert r.label == p["label"] and r.score == pytest.approx(p["score"], abs=1e-5)
    # text pairs: the second segment typed 1, as the tokenizer says
    pairs = [("the cat sat", "on the mat"), ("a dog", "runs fast")]
    with torch.no_grad():
        pl = ref(**tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(enc.predict_proba(pairs), torch.softmax(pl, -1).numpy(), atol=1e-5, rtol=0)


def test_classify_one_logit_head_is_a_sigmoid(tmp_path):
    from transformers import BertForSequenceClassification
    ref, tok = bert_text_folder(tmp_path / "one", dict(BERT, num_labels=1), seed=6,
                                model_class=BertForSequenceClassification)
    enc = TextEncoder.from_pretrained(str(tmp_path / "one"))
    with torch.no_grad():
        logit = ref(**tok(TEXTS, padding=True, return_tensors="pt")).logits[:, 0]
    out = enc.classify(TEXTS)
    np.testing.assert_allclose([r.score for r in out], torch.sigmoid(logit).numpy(), atol=1e-5)


def test_classify_token_head_skips_special_tokens_and_gives_offsets(tmp_path):
    from transformers import BertForTokenClassification
    ref, tok = bert_text_folder(tmp_path / "tok", dict(BERT, num_labels=4, id2label=TOKEN_LABELS,
                                                       label2id={v: k for k, v in TOKEN_LABELS.items()}),
                                seed=8, model_class=BertForTokenClassification)
    enc = TextEncoder.from_pretrained(str(tmp_path / "tok"))
    texts = ["The cat sat.", "a green dogs"]
    out = enc.classify(texts)
    assert [[t.token for t in r] for r in out] == [["the", "cat", "sat", "."], ["a", "green", "dog", "##s"]]
    assert all(isinstance(t, TokenClassification) for r in out for t in r)
    assert [texts[0][t.start:t.end] for t in out[0]] == ["The", "cat", "sat", "."]
    probs = enc.predict_proba(texts)
    assert [p.shape for p in probs] == [(6, 4), (6, 4)]
    with torch.no_grad():
        want = torch.softmax(ref(**tok(texts, padding=True, return_tensors="pt")).logits, -1).numpy()
    for p, w in zip(probs, want):
        np.testing.assert_allclose(p, w[:len(p)], atol=1e-5, rtol=0)
    assert [t.label for t in out[1]] == [TOKEN_LABELS[i] for i in want[1, 1:5].argmax(1)]
    assert out[1][2].score == pytest.approx(float(want[1, 3].max()), abs=1e-5)


def test_cyformer_tokenizer_folder(tmp_path):
    """A cyformer encoder folder whose tokenizer is cyformer's own (vocab.json + tokenizer_config.json)."""
    from cyformer import VocabTokenizer
    tok = VocabTokenizer.build(TEXTS + _sentences(20), level="word")
    model = Encoder(EncoderConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, d_ff=32, n_layers=1,
                                  max_len=10), seed=3)
    model.save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    enc = TextEncoder.from_pretrained(str(tmp_path / "m"))
    texts = ["the cat sat on the mat", "a dog", "the happy bird sits in a small house and the sad dog runs"]
    with pytest.warns(TruncationWarning, match="1 of 3"):
        got = enc.embed(texts)
    ids = tok.encode(texts, add_eos=False)   # as the encoder demos train: one id per word
    ids[2] = ids[2][:10]
    np.testing.assert_allclose(got, model.embed(ids), atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="text pairs"):
        enc.embed([("a", "b")])
    # a token head over cyformer's tokenizer: one label per word, with its place in the text
    config = EncoderConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, d_ff=32, n_layers=1, max_len=10,
                           head="token_classification", n_labels=3, id2label={0: "DET", 1: "NOUN", 2: "VERB"})
    tagger = TextEncoder(Encoder(config, seed=1), tok)
    words = tagger.classify("the  cat sat")
    assert [(w.token, w.start, w.end) for w in words] == [("the", 0, 3), ("cat", 5, 8), ("sat", 9, 12)]
    assert all(w.label in ("DET", "NOUN", "VERB") for w in words)


def test_bad_input(tmp_path, bert_dir):
    enc = TextEncoder.from_pretrained(str(bert_dir))
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        enc.embed(["a", 3])
    with pytest.raises(TypeError, match="texts must be a str or a list"):
        enc.embed(b"bytes")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        enc.embed(["a"], batch_size=0)
    with pytest.raises(ValueError, match="pooling must be one of"):
        enc.embed(["a"], pooling="sum")
    with pytest.raises(ValueError, match="has no classification head"):
        enc.classify(["a"])
    with pytest.raises(ValueError, match=r"max_len must be an int in \[1, 40\]"):
        TextEncoder(enc.model, enc.tokenizer, max_len=41)
    with pytest.raises(TypeError, match="tokenizer must be"):
        TextEncoder(enc.model, object())
    # a folder without a tokenizer
    enc.model.save_pretrained(str(tmp_path / "bare"))
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        TextEncoder.from_pretrained(str(tmp_path / "bare"))
    # a tokenizer larger than the model's vocabulary
    small = Encoder(EncoderConfig(vocab_size=20, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=8))
    with pytest.raises(ValueError, match="the model's vocabulary only 20"):
        TextEncoder(small, enc.tokenizer)
    # a damaged tokenizer.json
    broken = tmp_path / "broken"
    shutil.copytree(bert_dir, broken)
    (broken / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ValueError, match="tokenizer.json is not a tokenizer"):
        TextEncoder.from_pretrained(str(broken))
    (broken / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(CheckpointError, match="tokenizer.json is not valid JSON"):
        TextEncoder.from_pretrained(str(broken))
    # the caller's tokenizer keeps its settings
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(bert_dir / "tokenizer.json"))
    tok.enable_truncation(5)
    TextEncoder(enc.model, tok)
    assert tok.truncation["max_length"] == 5


def test_unsupported_sentence_transformers_modules_are_named(tmp_path, bert_dir):
    st, folder = _st_folder(tmp_path, bert_dir)
    modules = json.loads((folder / "modules.json").read_text())
    dense = dict(idx=2, name="2", path="2_Dense", type="sentence_transformers.models.Dense")
    (folder / "modules.json").write_text(json.dumps(modules + [dense]))
    with pytest.raises(CheckpointError, match=r"module Dense \(sentence_transformers.models.Dense\) is not supported"):
        Encoder.from_pretrained(str(folder))
    (folder / "modules.json").write_text(json.dumps(modules[:1]))
    with pytest.raises(CheckpointError, match="no Pooling module"):
        TextEncoder.from_pretrained(str(folder))
    (folder / "modules.json").write_text(json.dumps([dict(modules[0], path="../elsewhere"), modules[1]]))
    with pytest.raises(CheckpointError, match="points outside the folder"):
        Encoder.from_pretrained(str(folder))
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "median"}))
    with pytest.raises(CheckpointError, match="pooling mode 'median' is not supported"):
        Encoder.from_pretrained(str(folder))
    (folder / "modules.json").write_text("[")
    with pytest.raises(CheckpointError, match="modules.json is not valid JSON"):
        Encoder.from_pretrained(str(folder))


def test_save_pretrained_round_trip(tmp_path, bert_dir):
    """A sentence-transformers folder saved by TextEncoder: cyformer's format, memory-mapped,
    the same vectors (pooling, Normalize, max_len, prompts and lowercasing kept)."""
    st, folder = _st_folder(tmp_path, bert_dir, pooling="max", normalize=True, max_seq_length=20)
    enc = TextEncoder.from_pretrained(str(folder))
    enc.prompts = {"query": "query: "}
    enc.save_pretrained(str(tmp_path / "ours"))
    back = TextEncoder.from_pretrained(str(tmp_path / "ours"))
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "cyformer-encoder"
    assert back.model.params.base is not None and back.max_len == 20 and back.prompts == {"query": "query: "}
    texts = TEXTS + _sentences(10, seed=11, hi=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        np.testing.assert_array_equal(back.embed(texts), enc.embed(texts))
        np.testing.assert_array_equal(back.embed(texts, prompt_name="query"), enc.embed(texts, prompt_name="query"))
        np.testing.assert_allclose(back.embed(texts), st.encode(texts), atol=EMBED_ATOL, rtol=0)
