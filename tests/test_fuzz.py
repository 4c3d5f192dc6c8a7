"""Property-based bad-input tests (hypothesis): every public entry point either returns a
correct result or raises a documented exception (ValueError, TypeError, CheckpointError,
FileNotFoundError); never a crash, a hang or a silently wrong answer.

"Correct" is checked against an independent computation wherever the input is valid:
a padded batch gives what its sequences give one by one, generation respects its options,
a checkpoint that loads holds exactly the bytes that were written.
"""
import json
import os
import struct
import tempfile
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cyformer  # noqa: E402
from cyformer import CheckpointError, Transformer, TransformerConfig  # noqa: E402
from cyformer._engine import attention, embedding, linear, loss, norm  # noqa: E402
from cyformer.training import Trainer  # noqa: E402

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
DOCUMENTED = (ValueError, TypeError)
VOCAB = 23
MAX_LEN = 12

_model = None


def model():
    global _model
    if _model is None:
        _model = Transformer(TransformerConfig(src_vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32,
                                               n_encoder_layers=1, n_decoder_layers=1, max_len=MAX_LEN,
                                               dropout=0.0), seed=3)
    return _model


ids = st.integers(min_value=-3, max_value=VOCAB + 2)
# half the batches are valid, so the "correct result" branches are exercised as often as the errors
valid_sequences = st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=MAX_LEN), min_size=1, max_size=4)
sequences = st.one_of(valid_sequences,
                      st.lists(st.lists(ids, min_size=0, max_size=MAX_LEN + 2), min_size=0, max_size=4))


def _valid(seqs):
    return (len(seqs) > 0 and all(0 < len(s) <= MAX_LEN and all(0 <= t < VOCAB for t in s) for s in seqs))


@FUZZ
@given(src=sequences, tgt=sequences, same_size=st.booleans())
def test_forward_on_random_token_lists(src, tgt, same_size):
    if same_size and len(src) > 0 and len(tgt) > 0:
        tgt = (tgt * len(src))[:len(src)]
    m = model()
    if not (_valid(src) and _valid(tgt) and len(src) == len(tgt)):
        event("refused")
        with pytest.raises(DOCUMENTED):
            m.forward(src, tgt)
        return
    event("computed")
    logits = m.forward(src, tgt)
    assert logits.shape == (len(src), max(map(len, tgt)), VOCAB)
    for i, (s, t) in enumerate(zip(src, tgt)):   # batching changes nothing
        alone = m.forward([s], [t])[0]
        np.testing.assert_allclose(logits[i, :len(t)], alone, rtol=1e-5, atol=1e-5)
        assert not logits[i, len(t):].any()


arrays = st.builds(
    lambda shape, dtype, seed: np.random.default_rng(seed).integers(-2, VOCAB + 2, size=shape).astype(dtype),
    st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    st.sampled_from([np.int64, np.int32, np.int8, np.uint16, np.float32, np.float64, np.bool_]),
    st.integers(0, 2 ** 16))


@FUZZ
@given(arr=arrays, lengths=st.one_of(st.none(), st.lists(st.integers(-2, 8), max_size=6)))
def test_encode_on_random_arrays(arr, lengths):
    m = model()
    try:
        memory = m.encode(arr, src_lengths=lengths)
    except DOCUMENTED:
        return
    # it ran: then the input was a valid integer batch, and the result is what each row gives alone
    assert np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_
    rows = arr if arr.ndim == 2 else arr[None]
    lens = [rows.shape[1]] * rows.shape[0] if lengths is None else lengths
    for i, n in enumerate(lens):
        alone = m.encode([rows[i, :n].tolist()])[0]
        np.testing.assert_allclose(memory[i, :n], alone, rtol=1e-5, atol=1e-5)


options = st.fixed_dictionaries({}, optional={
    "beam_size": st.one_of(st.integers(-1, 5), st.just(2.0), st.just(True)),
    "max_length": st.one_of(st.none(), st.integers(-1, MAX_LEN + 3)),
    "min_length": st.integers(-1, 6),
    "num_hypotheses": st.integers(0, 5),
    "length_penalty": st.one_of(st.floats(-1, 3), st.just(float("nan")), st.just(float("inf"))),
    "sampling_topk": st.integers(-1, 30),
    "sampling_topp": st.one_of(st.floats(-0.5, 1.5), st.just(float("nan"))),
    "sampling_temperature": st.one_of(st.floats(-1, 3), st.just(0.0)),
    "seed": st.integers(0, 100),
    "return_attention": st.booleans(),
})


@settings(FUZZ, max_examples=200)
@given(src=sequences, opts=options)
def test_generate_with_random_options(src, opts):
    m = model()
    try:
        results = m.generate(src, **opts)
    except DOCUMENTED as e:
        event(f"refused: {type(e).__name__}")
        return
    event("generated")
    assert _valid(src)
    max_length = opts.get("max_length") or min(256, MAX_LEN)
    beam = opts.get("beam_size", 1)
    n_best = opts.get("num_hypotheses", 1)
    assert 1 <= n_best <= beam and opts.get("min_length", 0) <= max_length
    assert len(results) == len(src)
    for r, s in zip(results, src):
        assert len(r.sequences) == n_best and len(r.scores) == n_best
        for seq, score in zip(r.sequences, r.scores):
            assert 1 <= len(seq) <= max_length
            assert all(0 <= t < VOCAB and t != m.config.pad_id for t in seq)
            assert m.config.eos_id not in seq[:-1]            # stops at EOS
            if len(seq) < max_length:
                assert seq[-1] == m.config.eos_id
            assert np.isfinite(score)
        if opts.get("return_attention"):
            for seq, att in zip(r.sequences, r.attention):
                assert att.shape == (len(seq), len(s)) and np.allclose(att.sum(axis=-1), 1, atol=1e-4)


@FUZZ
@given(src=sequences, tgt=sequences, same_size=st.booleans())
def test_training_step_on_random_batches(src, tgt, same_size):
    if same_size and len(src) > 0 and len(tgt) > 0:
        tgt = (tgt * len(src))[:len(src)]
    loss_value = _one_step(model(), src, tgt)
    if loss_value is not None:
        assert np.isfinite(loss_value)
        assert len(src) == len(tgt) and _valid(src)


def _one_step(m, src, tgt):
    """The loss of one Trainer step on (src, tgt), the parameters put back after it; None when
    the batch is refused with a documented error (and then nothing changed)."""
    before = m.params.copy()
    trainer = Trainer(m, schedule="constant", lr=1e-3)
    try:
        return trainer.step(src, tgt)
    except DOCUMENTED:
        event("refused")
        np.testing.assert_array_equal(m.params, before)   # a refused batch changes nothing
        return None
    finally:
        m.params[...] = before


_heads = {}


def head_model(head):
    if head not in _heads:
        _heads[head] = cyformer.Encoder(cyformer.EncoderConfig(
            vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32, n_layers=1, max_len=MAX_LEN, type_vocab_size=2,
            head=head, n_labels=3, pooler=head == "sequence_classification", dropout=0.0), seed=3)
    return _heads[head]


labels_ = st.one_of(st.integers(-101, 4), st.sampled_from(["LABEL_0", "LABEL_2", "nope"]), st.floats(0, 2))


@FUZZ
@given(src=sequences, types=st.one_of(st.none(), sequences), head=st.sampled_from(["sequence_classification",
                                                                                     "token_classification"]))
def test_classify_on_random_token_lists(src, types, head):
    m = head_model(head)
    try:
        logits = m.classify(src, token_type_ids=types)
    except DOCUMENTED:
        event("refused")
        return
    assert _valid(src)
    # a batch gives what its sequences give one by one
    for b, s in enumerate(src):
        one = m.classify([s], token_type_ids=None if types is None else [types[b][:len(s)]])[0]
        got = logits[b] if head == "sequence_classification" else logits[b, :len(s)]
        np.testing.assert_allclose(got, one, atol=1e-5, rtol=1e-5)
        if head == "token_classification":
            assert not logits[b, len(s):].any()


@FUZZ
@given(src=sequences, labels=st.lists(st.one_of(labels_, st.lists(labels_, max_size=MAX_LEN + 1)), max_size=5),
       head=st.sampled_from(["sequence_classification", "token_classification"]))
def test_label_training_step_on_random_batches(src, labels, head):
    loss_value = _one_step(head_model(head), src, labels)
    if loss_value is not None:
        assert np.isfinite(loss_value) and _valid(src) and len(src) == len(labels)


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
       region=st.sampled_from(["anywhere", "header", "data"]), truncate=st.booleans())
def test_corrupt_or_truncated_checkpoints(tmp_path_factory, cut, flips, region, truncate):
    directory = str(tmp_path_factory.mktemp("ckpt"))
    m = model()
    m.save_pretrained(directory)
    path = os.path.join(directory, "model.safetensors")
    blob = bytearray(open(path, "rb").read())
    header_end = 8 + struct.unpack("<Q", bytes(blob[:8]))[0]
    lo, hi = {"anywhere": (0, len(blob)), "header": (0, header_end), "data": (header_end, len(blob))}[region]
    for where, value in flips:
        blob[lo + int(where * (hi - lo - 1))] = value
    if truncate:
        blob = blob[:int(cut * len(blob))]
    with open(path, "wb") as f:
        f.write(blob)
    try:
        loaded = Transformer.from_pretrained(directory)
    except (CheckpointError, ValueError) as e:
        assert str(e)   # says what is wrong
        return
    # it loaded: the file was whole, and the weights are exactly its bytes
    assert len(blob) == header_end + m.params.nbytes
    np.testing.assert_array_equal(loaded.params.view(np.uint8), np.frombuffer(bytes(blob[header_end:]), np.uint8))
    if loaded.params.tobytes() != m.params.tobytes():   # flipped data bytes: the checksum says so
        with pytest.raises(CheckpointError, match="checksum"):
            Transformer.from_pretrained(directory, verify=True)
    else:
        Transformer.from_pretrained(directory, verify=True)


@FUZZ
@given(text=st.text(max_size=300))
def test_config_json_fuzz(tmp_path_factory, text):
    directory = str(tmp_path_factory.mktemp("cfg"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(text)
    with pytest.raises((ValueError, TypeError, FileNotFoundError)):
        Transformer.from_pretrained(directory)


config_fields = st.fixed_dictionaries({
    "src_vocab_size": st.one_of(st.integers(-1, 50), st.just("10"), st.just(3.5)),
    "d_model": st.integers(-1, 40), "n_heads": st.integers(-1, 5), "d_ff": st.integers(-1, 40),
    "n_encoder_layers": st.integers(-1, 2), "n_decoder_layers": st.integers(-1, 2),
    "max_len": st.integers(-1, 20), "dropout": st.floats(-0.5, 1.5),
    "activation": st.sampled_from(["relu", "gelu", "silu", "tanh", ""]),
    "pad_id": st.integers(-1, 60), "eos_id": st.integers(-1, 60), "norm_first": st.sampled_from([True, False, 1]),
})


@FUZZ
@given(fields=config_fields)
def test_config_validation(fields):
    try:
        config = TransformerConfig(**fields)
    except DOCUMENTED as e:
        assert str(e)
        return
    assert config.d_model % config.n_heads == 0 and 0 <= config.dropout < 1
    again = TransformerConfig.from_json(config.to_json())
    assert again == config


@FUZZ
@given(m_=st.integers(0, 9), n=st.integers(0, 9), k=st.integers(0, 9), wk=st.integers(0, 9),
       om=st.integers(0, 9), on=st.integers(0, 9), dtype=st.sampled_from([np.float32, np.float64, np.int32]))
def test_linear_kernel_shapes(m_, n, k, wk, om, on, dtype):
    x = np.ones((m_, k), dtype)
    w = np.ones((n, wk), np.float32)
    out = np.zeros((om, on), np.float32)
    try:
        linear.linear_forward(x, w, None, out)
    except DOCUMENTED:
        return
    assert dtype == np.float32 and wk == k and (om, on) == (m_, n)
    np.testing.assert_allclose(out, np.full((m_, n), float(k)))


@FUZZ
@given(qs=st.lists(st.integers(-2, 12), min_size=1, max_size=3), ql=st.lists(st.integers(-2, 12), min_size=1, max_size=3),
       ks=st.lists(st.integers(-2, 12), min_size=1, max_size=3), kl=st.lists(st.integers(-2, 12), min_size=1, max_size=3),
       heads=st.integers(-1, 5), causal=st.booleans(), window=st.integers(-1, 3))
def test_attention_kernel_bounds(qs, ql, ks, kl, heads, causal, window):
    q = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    out = np.zeros_like(q)
    i32 = lambda a: np.asarray(a, np.int32)  # noqa: E731
    try:
        attention.attention_forward(q, q, q, out, i32(qs), i32(ql), i32(ks), i32(kl), heads, causal=causal,
                                    window=window)
    except DOCUMENTED:
        return
    assert len(qs) == len(ql) == len(ks) == len(kl) and heads > 0 and 8 % heads == 0
    for b in range(len(qs)):
        assert 0 <= qs[b] and ql[b] >= 0 and qs[b] + ql[b] <= 10 and 0 <= ks[b] and kl[b] >= 0 and ks[b] + kl[b] <= 10
    assert np.isfinite(out).all()


@FUZZ
@given(ids_=st.lists(st.integers(-5, 40), max_size=10), vocab=st.integers(1, 30))
def test_embedding_and_loss_kernel_bounds(ids_, vocab):
    table = np.ones((vocab, 4), np.float32)
    tok = np.asarray(ids_, np.int32)
    out = np.zeros((len(ids_), 4), np.float32)
    valid = all(0 <= t < vocab for t in ids_)
    try:
        embedding.embedding_forward(tok, np.zeros(len(ids_), np.int32), table, None, 1.0, out)
        assert valid
    except DOCUMENTED:
        assert not valid
    logits = np.zeros((len(ids_), vocab), np.float32)
    try:
        losses, _ = loss.cross_entropy(logits, tok, 0.1, -100)
        assert valid
        np.testing.assert_allclose(losses, np.log(vocab), rtol=1e-5)
    except DOCUMENTED:
        assert not valid


@FUZZ
@given(texts=st.lists(st.text(max_size=40), max_size=5))
def test_translator_on_random_text(tmp_path_factory, texts):
    from cyformer import Translator
    from cyformer.tokenizer import VocabTokenizer

    tok = VocabTokenizer(list("abcdefghijklmnopqrs"), level="char")
    m = model()
    translator = Translator(m, tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # documented: long lines are truncated with a warning
        out = translator.translate(texts, beam_size=2, max_length=5)
    assert len(out) == len(texts)
    assert all(o == "" for o, t in zip(out, texts) if not t.strip())


# -- hostile files (issue 14 item 9): bounded headers and JSON files ------------------------
from hypothesis import example  # noqa: E402

from cyformer.io import json_depth, load_safetensors  # noqa: E402

FILES = settings(FUZZ, max_examples=60)
_CODES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"]
_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet='[]{}"\\ab', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=3), inner,
                                                                max_size=3),
    max_leaves=12)
dims = st.one_of(st.integers(0, 5), st.integers(-3, -1), st.integers(2 ** 31, 2 ** 70), st.floats(0, 5),
                 st.booleans(), st.text(max_size=2))
offsets = st.one_of(st.integers(0, 96), st.integers(-5, -1), st.integers(2 ** 40, 2 ** 70), st.floats(0, 96))
tensor_entries = st.one_of(
    json_values,
    st.fixed_dictionaries({"dtype": st.sampled_from(_CODES), "shape": st.lists(st.integers(0, 4), max_size=3),
                           "data_offsets": st.lists(st.integers(0, 96), min_size=2, max_size=2).map(sorted)}),
    st.fixed_dictionaries({}, optional={
        "dtype": st.one_of(st.sampled_from(_CODES + ["F33", "f32", ""]), json_values),
        "shape": st.one_of(st.lists(dims, max_size=4), json_values),
        "data_offsets": st.one_of(st.lists(offsets, max_size=3), json_values)}))
headers = st.one_of(
    st.dictionaries(st.text(max_size=4), tensor_entries, max_size=4).map(lambda h: json.dumps(h).encode()),
    st.dictionaries(st.just("__metadata__"), json_values, max_size=1).map(lambda h: json.dumps(h).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.sampled_from(["[", "{\"a\":", "[{\"b\":"]), st.integers(100, 3000), st.booleans()).map(
        lambda t: (t[0] * t[1] + ("0" + "]" * t[1] if t[2] and t[0] == "[" else "")).encode()),
    st.binary(max_size=60))


def _padded(raw):
    return raw + b" " * (-(8 + len(raw)) % 8)


# the seven hand-made files
@example(header=b"{}", data=b"", length=2 ** 62)
@example(header=json.dumps({"w": {"dtype": "F32", "shape": [2 ** 50], "data_offsets": [0, 2 ** 52]}}).encode(),
         data=bytes(16), length=None)
@example(header=json.dumps({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}).encode(),
         data=bytes(16), length=None)
@example(header=json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                            "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}).encode(),
         data=bytes(16), length=None)
@example(header=json.dumps({"w": {"dtype": "X9", "shape": [4], "data_offsets": [0, 16]}}).encode(),
         data=bytes(16), length=None)
@example(header=b"[" * 1000, data=b"", length=None)
@example(header=b"[" * 100_000 + b"]" * 100_000, data=b"", length=None)
@FILES
@given(header=headers, data=st.binary(max_size=96), length=st.one_of(st.none(), st.none(), st.integers(0, 2 ** 64 - 1)))
def test_hostile_safetensors_headers(tmp_path_factory, header, data, length):
    raw = _padded(header)
    path = os.path.join(str(tmp_path_factory.mktemp("st")), "model.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    try:
        arrays = load_safetensors(path)
    except CheckpointError as e:   # nothing else: no RecursionError, TypeError, OverflowError
        event("refused")
        assert str(e).startswith(path)
        return
    event("loaded")
    assert length in (None, len(raw))
    parsed = json.loads(raw)
    assert isinstance(parsed, dict)
    names = [k for k in parsed if k != "__metadata__"]
    assert sorted(arrays) == sorted(names)
    spans = []
    for name in names:
        info = parsed[name]
        begin, end = info["data_offsets"]
        assert all(type(s) is int and s >= 0 for s in info["shape"]) and type(begin) is type(end) is int
        assert arrays[name].shape == tuple(info["shape"])
        assert end - begin == int(np.prod(info["shape"], dtype=object)) * _SIZES[info["dtype"]] and end <= len(data)
        if info["dtype"] != "BF16":
            assert arrays[name].tobytes() == data[begin:end]
        spans.append((begin, end))
    spans.sort()
    assert all(b1 >= e0 for (_, e0), (b1, _) in zip(spans, spans[1:]))


def _json_texts():
    deep = st.tuples(st.sampled_from(["[", "{\"k\": ", "[\"]\", "]), st.integers(128, 5000), st.booleans()).map(
        lambda t: t[0] * t[1] + ("1" + ("]" if t[0] != "{\"k\": " else "}") * t[1] if t[2] else ""))
    return st.one_of(json_values.map(json.dumps), st.text(alphabet='[]{}"\\:,1 a', max_size=80), deep,
                     st.binary(max_size=80))


def _json_loaders():
    from cyformer.tokenizer import Tokenizer, VocabTokenizer
    return {"config.json": lambda d: Transformer.from_pretrained(d),
            "tokenizer_config.json": lambda d: Tokenizer.from_pretrained(d),
            "vocab.json": lambda d: VocabTokenizer.from_pretrained(d),
            "config.json/TransformerConfig.load": lambda d: TransformerConfig.load(os.path.join(d, "config.json"))}


@example(name="config.json", text="[" * 100_000 + "]" * 100_000)
@example(name="config.json", text="[" * 1000)
@example(name="tokenizer_config.json", text="[" * 100_000 + "]" * 100_000)
@example(name="tokenizer_config.json", text="{\"a\": " * 1000)
@example(name="vocab.json", text="[" * 100_000 + "]" * 100_000)
@example(name="vocab.json", text="[" * 1000)
@example(name="config.json/TransformerConfig.load", text="[" * 1000)
@FILES
@given(name=st.sampled_from(["config.json", "tokenizer_config.json", "vocab.json", "config.json/TransformerConfig.load"]),
       text=_json_texts())
def test_hostile_json_files(tmp_path_factory, name, text):
    from cyformer.tokenizer import VocabTokenizer
    directory = str(tmp_path_factory.mktemp("json"))
    VocabTokenizer(list("abc")).save_pretrained(directory)
    fname = name.split("/")[0]
    with open(os.path.join(directory, fname), "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    try:
        _json_loaders()[name](directory)
    except CheckpointError as e:
        event("CheckpointError")
        assert os.path.join(directory, fname) in str(e)
        return
    except (ValueError, TypeError, FileNotFoundError) as e:   # valid JSON, wrong contents
        event(type(e).__name__)
        assert str(e)
        assert json_depth(raw) <= 127
        json.loads(raw)
        return
    event("loaded")


def _depth(value):
    if isinstance(value, (list, dict)):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(c) for c in children), default=0)
    return 0


def _reference_depth(raw: bytes) -> int:
    """Character by character: a backslash before a backslash or quote escapes it (in a
    string, as JSON reads it; outside one the decoder fails there anyway)."""
    depth = best = 0
    inside = False
    i = 0
    while i < len(raw):
        ch = raw[i:i + 1]
        if ch == b"\\" and raw[i + 1:i + 2] in (b"\\", b'"'):
            i += 2
            continue
        if ch == b'"':
            inside = not inside
        elif not inside and ch in b"[{":
            depth += 1
            best = max(best, depth)
        elif not inside and ch in b"]}":
            depth -= 1
            if depth < 0:
                break
        i += 1
    return best


@settings(FUZZ, max_examples=200)
@given(value=json_values, text=st.text(alphabet='[]{}"\\ a', max_size=60))
def test_json_depth_scan(value, text):
    assert json_depth(json.dumps(value).encode()) == _depth(value)
    raw = text.encode()
    assert json_depth(raw) == _reference_depth(raw)
    try:
        parsed = json.loads(raw)
    except ValueError:
        return
    assert json_depth(raw) == _depth(parsed)
