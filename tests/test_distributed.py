"""cyformer.distributed on a real local Ray: translate_dataset / embed_dataset against
Translator.translate and Encoder.embed on the same inputs, ids and order, bad lines, a killed
actor, a missing model folder, and `cyformer translate --ray`.

One Ray (2 CPUs, no dashboard) serves the whole file; the models are tiny seeded ones, so the
file's time is mostly Ray starting actors.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from cyformer import Encoder, EncoderConfig, Transformer, Translator  # noqa: E402
from cyformer.data import load_task  # noqa: E402
from cyformer.recipes import _config_for  # noqa: E402

OPTIONS = dict(beam_size=2, max_length=12)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for this file; stopped at its end."""
    if ray.is_initialized():  # pragma: no cover - another file's Ray
        ray.shutdown()
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _pythonpath()  # the raylet and its workers inherit it
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def _pythonpath():
    """The actors import the cyformer these tests import (an in-tree build, too)."""
    import cyformer
    here = os.path.dirname(os.path.dirname(os.path.abspath(cyformer.__file__)))
    return os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A seeded (untrained) translation model over the dates task's vocabulary, and sentences."""
    data = load_task("dates", n_train=10, n_valid=10, n_test=300, seed=0)
    tokenizer = data.build_tokenizer()
    config = _config_for(tokenizer, dict(d_model=32, n_heads=2, d_ff=64, n_encoder_layers=1, n_decoder_layers=1,
                                         dropout=0.0, max_len=24, share_embeddings=True))
    folder = str(tmp_path_factory.mktemp("ray-model"))
    Transformer(config, seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    sentences = [data.task.detokenize(s, "source") for s, _ in data.test]
    return folder, sentences


@pytest.fixture(scope="module")
def translator(model):
    return Translator.from_pretrained(model[0])


def _bad_lines(sentences):
    """An empty line, a whitespace line, a source longer than max_len (truncated), and words
    outside the vocabulary."""
    return ["", "   ", " ".join(sentences[:12]), "zzz qqq " + sentences[0]]


def test_import_cyformer_does_not_import_ray():
    code = "import sys, cyformer, cyformer.cli; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=_pythonpath()))


def test_translate_dataset_equals_translator_in_order(local_ray, model, translator):
    from cyformer.distributed import translate_dataset
    folder, sentences = model
    texts = sentences[:150] + _bad_lines(sentences)
    ds = ray.data.from_items([{"text": t} for t in texts], override_num_blocks=7)
    rows = translate_dataset(ds, folder, actors=2, batch_size=16, **OPTIONS).take_all()
    assert [r["id"] for r in rows] == list(range(len(texts)))
    assert [r["text"] for r in rows] == texts
    assert [r["translation"] for r in rows] == translator.translate(texts, **OPTIONS)
    assert all(r["error"] is None for r in rows)


def test_ids_and_columns_are_kept(local_ray, model, translator):
    from cyformer.distributed import translate_dataset
    folder, sentences = model
    texts = sentences[:40]
    items = [{"key": 1000 + 7 * i, "src": t, "lang": "en"} for i, t in enumerate(texts)]
    ds = ray.data.from_items(items, override_num_blocks=3)
    rows = translate_dataset(ds, folder, text_column="src", id_column="key", actors=1, threads_per_actor=2,
                             batch_size=9, max_batch_size=4, **OPTIONS).take_all()
    assert [r["key"] for r in rows] == [it["key"] for it in items]
    assert {r["lang"] for r in rows} == {"en"} and "id" not in rows[0]
    assert [r["translation"] for r in rows] == translator.translate(texts, max_batch_size=4, **OPTIONS)


def test_text_files_with_bad_lines_get_error_records(local_ray, model, translator, tmp_path):
    from cyformer.distributed import translate_dataset
    folder, sentences = model
    first = sentences[:30] + _bad_lines(sentences)
    second = sentences[30:50]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("\n".join(first) + "\n", encoding="utf-8")
    bad = sentences[50].encode() + b" \xff\xfe " + sentences[51].encode()
    (tmp_path / "in" / "b.txt").write_bytes(b"\r\n".join([s.encode() for s in second[:10]] + [bad] +
                                                         [s.encode() for s in second[10:]]))  # no final newline
    rows = translate_dataset(str(tmp_path / "in"), folder, actors=2, batch_size=8, **OPTIONS).take_all()
    texts = first + second[:10] + ["<bad>"] + second[10:]
    assert [r["id"] for r in rows] == list(range(len(texts)))
    assert [os.path.basename(r["path"]) for r in rows] == ["a.txt"] * len(first) + ["b.txt"] * (len(second) + 1)
    assert [r["line"] for r in rows] == list(range(len(first))) + list(range(len(second) + 1))
    bad_row = rows[len(first) + 10]
    assert bad_row["translation"] == "" and "not valid UTF-8" in bad_row["error"] and "0xff" in bad_row["error"]
    assert "\ufffd" in bad_row["text"]
    good = [r for r in rows if r["error"] is None]
    assert len(good) == len(rows) - 1
    assert [r["translation"] for r in good] == translator.translate([r["text"] for r in good], **OPTIONS)


def test_null_and_non_string_values_get_error_records(local_ray, model, translator):
    from cyformer.distributed import translate_dataset
    folder, sentences = model
    import pyarrow as pa
    table = pa.table({"text": pa.array([sentences[0], None, sentences[1]], pa.string())})
    rows = translate_dataset(ray.data.from_arrow(table), folder, actors=1, **OPTIONS).take_all()
    assert rows[1]["error"] == "text is null, not a string" and rows[1]["translation"] == ""
    assert [rows[0]["translation"], rows[2]["translation"]] == translator.translate(sentences[:2], **OPTIONS)


def test_parquet_files(local_ray, model, translator, tmp_path):
    from cyformer.distributed import translate_dataset
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    folder, sentences = model
    paths = []
    for k in range(2):
        path = str(tmp_path / f"part-{k}.parquet")
        pq.write_table(pa.table({"id": list(range(20 * k, 20 * k + 20)), "text": sentences[20 * k:20 * k + 20]}), path)
        paths.append(path)
    rows = translate_dataset(paths, folder, actors=2, batch_size=8, **OPTIONS).take_all()
    assert [r["id"] for r in rows] == list(range(40))
    assert [r["translation"] for r in rows] == translator.translate(sentences[:40], **OPTIONS)


def _actor_pids(class_name):
    """Processes of this test's Ray whose title names ``class_name`` (Ray titles an actor's
    process "ray::MapWorker(MapBatches(<class>))"), found under this process's tree."""
    mine = {os.getpid()}
    parents = {}
    titles = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                titles[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    found = []
    for pid, title in titles.items():
        if class_name not in title or not title.startswith("ray::"):
            continue
        p, seen = pid, set()
        while p in parents and p not in seen and p not in mine:
            seen.add(p)
            p = parents[p]
        if p in mine:
            found.append(pid)
    return found


def test_a_killed_actor_is_restarted_and_every_line_written_once(local_ray, model, translator):
    import signal
    from cyformer.distributed import translate_dataset
    folder, sentences = model
    texts = [f"{s} {w}" for w in ("", "the") for s in sentences][:240]
    ds = ray.data.from_items([{"text": t} for t in texts], override_num_blocks=24)
    results = translate_dataset(ds, folder, actors=2, batch_size=10, **OPTIONS)
    killed, rows, at_kill = [], [], None
    for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows.extend(batch.to_pylist())
        if not killed:
            pids = _actor_pids("_TranslateActor")
            assert pids, "no actor process found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            at_kill = len(rows)
    assert at_kill < len(texts), "the job ended before the kill"
    assert [r["id"] for r in rows] == list(range(len(texts)))
    assert [r["translation"] for r in rows] == translator.translate(texts, **OPTIONS)
    assert killed[0] not in _actor_pids("_TranslateActor")


def test_a_missing_model_folder_fails_fast_with_its_path(local_ray, model, tmp_path):
    from cyformer.distributed import ModelFolderMissingError, translate_dataset
    _, sentences = model
    ds = ray.data.from_items([{"text": t} for t in sentences[:10]])
    missing = str(tmp_path / "not-here")
    start = time.perf_counter()
    with pytest.raises(ModelFolderMissingError, match="not-here does not exist on node .*same path"):
        translate_dataset(ds, missing, actors=1)
    assert time.perf_counter() - start < 60
    # without the check before the job, the actors' own check fails the job (Ray gives actors
    # whose constructor raised no second try)
    with pytest.raises(Exception, match="not-here does not exist"):
        translate_dataset(ds, missing, actors=1, check_nodes=False).take_all()


def test_bad_arguments_are_clear_errors(local_ray, model):
    from cyformer.distributed import translate_dataset
    folder, sentences = model
    ds = ray.data.from_items([{"text": t} for t in sentences[:4]])
    with pytest.raises(TypeError, match="unexpected keyword argument 'beam'"):
        translate_dataset(ds, folder, beam=2)
    with pytest.raises(ValueError, match="no column 'src'"):
        translate_dataset(ds, folder, text_column="src")
    with pytest.raises(ValueError, match="threads_per_actor must be >= 1"):
        translate_dataset(ds, folder, threads_per_actor=0)
    with pytest.raises(ValueError, match="threads_per_actor=3 is more CPUs than any node has"):
        translate_dataset(ds, folder, threads_per_actor=3)
    with pytest.raises(ValueError, match="min <= max"):
        translate_dataset(ds, folder, actors=(2, 1))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        translate_dataset("/no/such/file.txt", folder)
    # a bad option value fails the job once, in the actors' constructor, not line by line
    with pytest.raises(Exception, match="max_length=99 exceeds the model's max_len=24"):
        translate_dataset(ds, folder, actors=1, max_length=99).take_all()


def _cli(*argv):
    from cyformer.cli import main
    return main(list(argv))


def test_cli_translate_ray_matches_cli_translate(local_ray, model, tmp_path, capsys):
    folder, sentences = model
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("\n".join(sentences[:25] + _bad_lines(sentences)) + "\n", encoding="utf-8")
    (src / "sub" / "b.txt").write_text("\n".join(sentences[25:40]) + "\n", encoding="utf-8")
    (src / "empty.txt").write_text("", encoding="utf-8")
    out = tmp_path / "out"
    assert _cli("translate", folder, "--ray", "--actors", "2", "--threads-per-actor", "1", "--beam-size", "2",
                "--max-length", "12", "--quiet", str(src), str(out)) == 0
    for name in ("a.txt", "sub/b.txt", "empty.txt"):
        plain = tmp_path / ("plain-" + name.replace("/", "-"))
        assert _cli("translate", folder, str(src / name), "-o", str(plain), "--beam-size", "2",
                    "--max-length", "12", "--quiet") == 0
        assert (out / name).read_text(encoding="utf-8") == plain.read_text(encoding="utf-8"), name
    # one file to one file; a bad line is a warning and an empty line, not a failed job
    (src / "bad.txt").write_bytes(sentences[0].encode() + b"\n\xff\n" + sentences[1].encode() + b"\n")
    capsys.readouterr()
    assert _cli("translate", folder, "--ray", "--actors", "1", "--beam-size", "2", "--max-length", "12", "--quiet",
                str(src / "bad.txt"), str(tmp_path / "bad.out")) == 0
    lines = (tmp_path / "bad.out").read_text(encoding="utf-8").split("\n")
    assert lines[1] == "" and len(lines) == 4
    assert "1 line(s) could not be translated" in capsys.readouterr().err


def test_cli_translate_ray_errors_are_one_line(local_ray, model, tmp_path, capsys):
    folder, sentences = model
    (tmp_path / "in.txt").write_text(sentences[0] + "\n", encoding="utf-8")
    cases = [
        (["--ray", str(tmp_path / "in.txt")], "give INPUT and OUTPUT"),
        (["--ray", "--threads", "2", str(tmp_path / "in.txt"), str(tmp_path / "o.txt")], "--threads-per-actor"),
        (["--actors", "2", str(tmp_path / "in.txt")], "--actors needs --ray"),
        (["--ray", str(tmp_path / "nope.txt"), str(tmp_path / "o.txt")], "does not exist"),
        (["--ray", str(tmp_path / "in.txt"), str(tmp_path / "in.txt")], "would overwrite an input"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert _cli("translate", folder, *extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    capsys.readouterr()
    assert _cli("translate", str(tmp_path / "no-model"), "--ray", str(tmp_path / "in.txt"),
                str(tmp_path / "o.txt")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cyformer translate: error: ") and "no-model does not exist on node" in err[-1]
    assert not (tmp_path / "o.txt").exists()


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory, model):
    """A seeded encoder-only model with the translation model's tokenizer."""
    from cyformer import Tokenizer
    tokenizer = Tokenizer.from_pretrained(model[0])
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=2, d_ff=64, n_layers=1,
                           max_len=24, pad_id=tokenizer.pad_id)
    folder = str(tmp_path_factory.mktemp("ray-encoder"))
    Encoder(config, seed=5).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _reference_embeddings(folder, texts, pooling):
    """What the actors compute, in one process: TextEncoder.embed when it exists, else
    Encoder.embed over the folder's tokenizer."""
    import cyformer
    if hasattr(cyformer, "TextEncoder"):
        return cyformer.TextEncoder.from_pretrained(folder).embed(texts, pooling=pooling)
    from cyformer import Tokenizer
    encoder, tokenizer = Encoder.from_pretrained(folder), Tokenizer.from_pretrained(folder)
    ids = [s[:encoder.config.max_len] for s in tokenizer.encode(texts, side="source")]
    return np.concatenate([encoder.embed([i], pooling=pooling) for i in ids])


def test_embed_dataset_equals_encoder(local_ray, model, encoder_folder):
    from cyformer.distributed import embed_dataset
    _, sentences = model
    texts = sentences[:60] + _bad_lines(sentences)
    import pyarrow as pa
    table = pa.table({"text": pa.array(texts + [None], pa.string())})
    rows = embed_dataset(ray.data.from_arrow(table), encoder_folder, actors=2, batch_size=16,
                         pooling="mean").take_all()
    assert [r["id"] for r in rows] == list(range(len(texts) + 1))
    assert rows[-1]["embedding"] is None and "null" in rows[-1]["error"]
    got = np.stack([np.asarray(r["embedding"], np.float32) for r in rows[:-1]])
    np.testing.assert_allclose(got, _reference_embeddings(encoder_folder, texts, "mean"), rtol=1e-5, atol=1e-5)
