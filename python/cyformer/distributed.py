"""Batch translation and embedding on a Ray cluster: ``pip install "cyformer[ray]"``.

``translate_dataset(data, model_dir, ...)`` and ``embed_dataset(data, model_dir, ...)`` take a
Ray Dataset with a text column, or paths of text files / folders of them / Parquet files, and
return a Ray Dataset with the results, computed by Ray Data's ``map_batches`` over a fixed pool
of actors. Each actor loads the model once (memory-mapped: the actors of one host share the
file's pages), sets ``threads_per_actor`` OpenMP/BLAS threads and reserves as many CPUs from
Ray, and runs ``Translator`` on each batch of ``batch_size`` rows: the batch is sorted by
length and decoded ``max_batch_size`` sentences at a time, with ``Translator``'s options.

Rows come out in input order (the dataset's ``preserve_order`` is set) with their ids; none is
dropped or repeated: an actor that dies is restarted by Ray and its batch runs again.

The output schema (translation):

=============== ====================================================================
``id``          int64: the row's id (the input's ``id`` column, else its position)
``path``        the source file (text files read by ``read_text_files`` only)
``line``        int64: 0-based line number in that file (likewise)
``text``        the source text (input columns are kept)
``translation`` the best translation ("" for an empty line or an error)
``error``       null, or why the row has no translation
=============== ====================================================================

Awkward lines never fail a job: an empty line translates to "" (as ``Translator``); a line
longer than the model's ``max_len`` pieces is truncated (``Translator``'s documented fallback);
a line that is not valid UTF-8 (text files) or a null / non-string value gets an ``error``
record and an empty translation; a batch that raises is retried line by line and only the
lines that still raise get error records. What would fail every line (a model folder missing
on a node, an unknown option) fails the job at once, before or while the actors start.

Ray is imported by this module only, never by ``import cyformer``.
"""
from __future__ import annotations

import os
import socket
import warnings
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

TEXT_SUFFIXES_PARQUET = (".parquet", ".pq")
DEFAULT_BATCH_SIZE = 256


class RayNotInstalledError(ImportError):
    """cyformer.distributed was used without Ray installed."""


def _ray():
    """The ray module with Ray Data, or a clear ImportError saying how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayNotInstalledError(f'cyformer.distributed needs Ray Data ({e}): pip install "cyformer[ray]"') from None
    return ray


def _pa():
    import pyarrow as pa
    return pa


# -- reading ---------------------------------------------------------------------------------------
def _expand(paths: Union[str, os.PathLike, Sequence]) -> List[str]:
    """Files named by ``paths`` (files, or folders read recursively, hidden entries skipped),
    each folder's files in sorted order; absolute paths."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: List[str] = []
    for p in paths:
        p = os.path.abspath(os.fspath(p))
        if os.path.isdir(p):
            found = []
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(os.path.join(root, n) for n in names if not n.startswith("."))
            files.extend(sorted(found))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist" if not os.path.exists(p)
                                    else f"input {p} is not a file or a folder")
    if not files:
        raise FileNotFoundError(f"no input files in {', '.join(os.fspath(p) for p in paths)}")
    return files


def iter_text_lines(path: str) -> Iterator[Tuple[str, Optional[str]]]:
    """(text, error) for each line of a text file, as ``cyformer translate`` reads it: lines
    end at "\\n" (a "\\r" before it is dropped), a last line without one counts. A line that is
    not valid UTF-8 is decoded with U+FFFD replacements and its error says where it broke."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f):
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            try:
                yield raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield (raw.decode("utf-8", errors="replace"),
                       f"line {n + 1} of {path} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})")


def read_text_files(paths, *, rows_per_block: int = DEFAULT_BATCH_SIZE):
    """A Ray Dataset of the lines of text files (``id``, ``path``, ``line``, ``text``,
    ``error``): one row per line, ``id`` counting over all files in order.

    The driver reads the files (reading is fast next to translating them) and puts blocks of
    ``rows_per_block`` rows into the object store, so no read task competes with the actors
    for CPUs and an undecodable line is a row with an error rather than a failed read.
    """
    ray = _ray()
    pa = _pa()
    _positive_int("rows_per_block", rows_per_block)
    tables = []
    next_id = 0
    for path in _expand(paths):
        block: Dict[str, list] = {"id": [], "path": [], "line": [], "text": [], "error": []}

        def flush():
            nonlocal block
            if block["id"]:
                tables.append(pa.table({"id": pa.array(block["id"], pa.int64()),
                                        "path": pa.array(block["path"], pa.string()),
                                        "line": pa.array(block["line"], pa.int64()),
                                        "text": pa.array(block["text"], pa.string()),
                                        "error": pa.array(block["error"], pa.string())}))
            block = {k: [] for k in block}

        for n, (text, error) in enumerate(iter_text_lines(path)):
            block["id"].append(next_id)
            block["path"].append(path)
            block["line"].append(n)
            block["text"].append(text)
            block["error"].append(error)
            next_id += 1
            if len(block["id"]) == rows_per_block:
                flush()
        flush()
    if not tables:
        return ray.data.from_arrow(pa.table({"id": pa.array([], pa.int64()), "path": pa.array([], pa.string()),
                                             "line": pa.array([], pa.int64()), "text": pa.array([], pa.string()),
                                             "error": pa.array([], pa.string())}))
    return ray.data.from_arrow(tables)


def read_parquet_files(paths, *, rows_per_block: int = DEFAULT_BATCH_SIZE):
    """A Ray Dataset of the rows of Parquet files, in file order, in blocks of
    ``rows_per_block`` rows (so that every actor gets work; a file would be one block).

    The driver reads them, as ``read_text_files`` does, so that no read task waits for a CPU
    that an actor holds while the actor waits for the read. (A Dataset of your own, e.g.
    ``ray.data.read_parquet("s3://...").materialize()``, reads on the workers instead.)
    """
    ray = _ray()
    import pyarrow.parquet as pq
    _positive_int("rows_per_block", rows_per_block)
    pa = _pa()
    tables = []
    for path in _expand(paths):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows_per_block):
            tables.append(pa.Table.from_batches([batch]))
    if not tables:
        raise ValueError(f"no rows in {', '.join(os.fspath(p) for p in _expand(paths))}")
    return ray.data.from_arrow(tables)


def _as_dataset(data, text_column: str, id_column: str, rows_per_block: int):
    """The input as a Ray Dataset with ``text_column`` and ``id_column``."""
    ray = _ray()
    if isinstance(data, ray.data.Dataset):
        ds = data
    else:
        files = _expand(data)
        parquet = [f.endswith(TEXT_SUFFIXES_PARQUET) for f in files]
        if all(parquet):
            # read into the object store before the actors start: a read task waiting for a CPU
            # that an actor holds, while the actor waits for the read, would never finish
            ds = read_parquet_files(files, rows_per_block=rows_per_block)
        elif any(parquet):
            raise ValueError("give text files or Parquet files, not both in one call")
        else:
            if text_column != "text" or id_column != "id":
                raise ValueError("text files are read into the columns 'text' and 'id'")
            return read_text_files(files, rows_per_block=rows_per_block)
    names = ds.schema().names
    if text_column not in names:
        raise ValueError(f"the dataset has no column {text_column!r} (its columns: {', '.join(names)}); "
                         f"pass text_column=")
    if id_column not in names:
        ds = _with_positions(ds, id_column)
    return ds


def _with_positions(ds, id_column: str):
    """``ds`` with a column ``id_column`` of row positions 0, 1, ...: the dataset is
    materialized block by block in the object store (in order), each block's rows counted by a
    zero-CPU task, and each block given its ids by another; no row passes through the driver."""
    ray = _ray()

    @ray.remote(num_cpus=0)
    def rows(table):
        return table.num_rows

    @ray.remote(num_cpus=0)
    def number(table, start):
        pa = _pa()
        return table.append_column(id_column, pa.array(range(start, start + table.num_rows), pa.int64()))

    ds.context.execution_options.preserve_order = True
    refs = ds.to_arrow_refs()
    starts, total = [], 0
    for n in ray.get([rows.remote(r) for r in refs]):
        starts.append(total)
        total += n
    return ray.data.from_arrow_refs([number.remote(r, s) for r, s in zip(refs, starts)])


# -- checks ----------------------------------------------------------------------------------------
def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class ModelFolderMissingError(FileNotFoundError):
    """The model folder is not on every node that runs actors."""


def _model_folder_problem(model_dir: str) -> Optional[str]:
    """Why ``model_dir`` cannot be loaded on this host, or None."""
    from .model import require_model_folder
    try:
        require_model_folder(model_dir)
    except FileNotFoundError as e:
        return str(e)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        return f"{model_dir} has no config.json"
    return None


def _check_model_on_nodes(model_dir: str, tokenizer_dir: Optional[str]) -> None:
    """Fail fast, naming the nodes, when a folder is missing on a node with CPUs: one
    zero-CPU task pinned to each such node looks for it."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def look(paths):
        # self-contained (cloudpickle sends it by value): the worker imports neither cyformer
        # nor its kernels just to look at a folder
        import os as _os
        import socket as _socket
        problems = []
        for d, what in paths:
            if not _os.path.isdir(d):
                problems.append(f"{what} folder {d} does not exist")
            elif what == "model" and not _os.path.isfile(_os.path.join(d, "config.json")):
                problems.append(f"{d} has no config.json")
        return _socket.gethostname(), problems

    paths = [(model_dir, "model")] + ([(tokenizer_dir, "tokenizer")] if tokenizer_dir else [])
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    refs = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths)
            for n in nodes]
    problems = []
    for node, (host, found) in zip(nodes, ray.get(refs)):
        problems.extend(f"{msg} on node {node.get('NodeManagerAddress', host)} ({host})" for msg in found)
    if problems:
        raise ModelFolderMissingError(f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                                      + "; every node that runs actors needs the folder at the same path "
                                        "(a shared file system, or copy it to each node)")


def _cluster_cpus() -> int:
    ray = _ray()
    return int(ray.cluster_resources().get("CPU", 1))


def _check_fit(actors, threads_per_actor: int) -> None:
    """An actor that no node can hold would wait forever: say so instead."""
    ray = _ray()
    largest = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if threads_per_actor > largest:
        raise ValueError(f"threads_per_actor={threads_per_actor} is more CPUs than any node has (at most "
                         f"{largest:g}): an actor would never start")
    wanted = (actors if isinstance(actors, int) else actors[0] if isinstance(actors, tuple) else 1) * threads_per_actor
    if wanted > _cluster_cpus():
        warnings.warn(f"{wanted} CPUs asked for (actors x threads_per_actor) but the cluster has "
                      f"{_cluster_cpus()}: the pool waits for actors that may never start", stacklevel=3)


def _pool(actors, threads_per_actor: int, lazy: bool):
    """Ray Data's actor pool for ``actors`` (an int, a (min, max) pair to autoscale, or None:
    as many as the cluster's CPUs hold at ``threads_per_actor`` each, less one CPU for the
    tasks that read a ``lazy`` dataset, which would otherwise wait for the actors forever)."""
    ray = _ray()
    if actors is None:
        actors = max(1, (_cluster_cpus() - (1 if lazy else 0)) // threads_per_actor)
    if isinstance(actors, tuple):
        if len(actors) != 2:
            raise ValueError(f"actors must be an int or a (min, max) pair, not {actors!r}")
        lo, hi = (_positive_int("actors", a) for a in actors)
        if lo > hi:
            raise ValueError(f"actors=(min, max) needs min <= max, got {actors!r}")
        return ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)
    return ray.data.ActorPoolStrategy(size=_positive_int("actors", actors))


def _ensure_ray(address: Optional[str]) -> None:
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")


def _unwrap(error: BaseException) -> BaseException:
    """The exception an actor raised, out of Ray's wrappers (for one clear message)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException) and cause is not error:
            error = cause
            continue
        if error.__cause__ is not None:
            error = error.__cause__
            continue
        break
    return error


# -- the actors ------------------------------------------------------------------------------------
class _Worker:
    """What both actors share: the threads, the folder check, error records."""

    def __init__(self, model_dir: str, threads: int):
        problem = _model_folder_problem(model_dir)
        if problem:
            raise ModelFolderMissingError(f"{problem} on {socket.gethostname()}")
        from .threads import set_num_threads
        os.environ["OMP_NUM_THREADS"] = str(threads)
        set_num_threads(threads)

    @staticmethod
    def _texts(table, text_column: str) -> Tuple[List[Optional[str]], List[Optional[str]]]:
        """The texts to run (None where the row already has an error) and the errors so far."""
        values = table.column(text_column).to_pylist()
        errors = (table.column("error").to_pylist() if "error" in table.column_names
                  else [None] * len(values))
        texts: List[Optional[str]] = []
        for i, v in enumerate(values):
            if errors[i] is not None:
                texts.append(None)
            elif not isinstance(v, str):
                errors[i] = f"{text_column} is {'null' if v is None else type(v).__name__}, not a string"
                texts.append(None)
            else:
                texts.append(v)
        return texts, errors

    def _run_each(self, run, texts: List[Optional[str]], errors: List[Optional[str]], empty):
        """``run`` over the non-None texts at once; if that raises, one at a time, so that only
        the lines that raise get error records."""
        todo = [i for i, t in enumerate(texts) if t is not None]
        out = [empty] * len(texts)
        with warnings.catch_warnings():
            # truncation and <unk> warnings would repeat once per batch in every actor's log
            warnings.simplefilter("ignore")
            try:
                for i, r in zip(todo, run([texts[i] for i in todo])):
                    out[i] = r
            except Exception:  # noqa: BLE001 - narrowed line by line below
                for i in todo:
                    try:
                        out[i] = run([texts[i]])[0]
                    except Exception as e:  # noqa: BLE001 - a per-line error record
                        errors[i] = f"{type(e).__name__}: {' '.join(str(e).split())}"
        return out


class _TranslateActor(_Worker):
    def __init__(self, model_dir: str, tokenizer_dir: Optional[str], threads: int, text_column: str,
                 options: Dict[str, Any]):
        super().__init__(model_dir, threads)
        from .decoding import GenerationOptions, resolve_options
        from .translate import Translator
        self.translator = Translator.from_pretrained(model_dir, tokenizer_dir)
        self.text_column = text_column
        self.options = dict(options)
        # an option that would fail every line fails here, once, before any batch
        checked = resolve_options({k: v for k, v in self.options.items() if k not in ("max_batch_size", "batch_type")})
        checked.setdefault("max_length", min(256, self.translator.model.config.max_len))
        GenerationOptions(**checked).validate(self.translator.model.config.max_len)

    def __call__(self, table):
        pa = _pa()
        texts, errors = self._texts(table, self.text_column)
        out = self._run_each(lambda ts: self.translator.translate(ts, **self.options), texts, errors, "")
        out = [o if e is None else "" for o, e in zip(out, errors)]
        if "error" in table.column_names:
            table = table.drop_columns(["error"])
        return (table.append_column("translation", pa.array(out, pa.string()))
                     .append_column("error", pa.array(errors, pa.string())))


def translate_dataset(data, model_dir: str, *, tokenizer_dir: Optional[str] = None, text_column: str = "text",
                      id_column: str = "id", actors: Union[int, Tuple[int, int], None] = None,
                      threads_per_actor: int = 1, batch_size: int = DEFAULT_BATCH_SIZE,
                      max_batch_size: int = 32, batch_type: str = "examples", max_restarts: int = -1,
                      max_task_retries: int = -1, address: Optional[str] = None, check_nodes: bool = True,
                      **options):
    """Translate a Ray Dataset (or text / Parquet files) on a Ray cluster; see the module
    docstring for the output columns and how bad lines are handled.

    ``data``: a Ray Dataset with ``text_column`` (and ``id_column``, else ids are the row
    positions), or paths of text files, folders of them, or Parquet files.
    ``model_dir`` (and ``tokenizer_dir``): a folder at the same path on every node.
    ``actors``: the pool size (default: the cluster's CPUs // ``threads_per_actor``), or a
    (min, max) pair to autoscale; each actor reserves ``threads_per_actor`` CPUs and runs as
    many OpenMP threads. ``batch_size``: rows per Ray batch (one actor call, sorted by length
    inside); ``max_batch_size``, ``batch_type`` and ``options`` (``beam_size``,
    ``max_length``, ...) are ``Translator.translate``'s. ``max_restarts`` /
    ``max_task_retries``: Ray's, for an actor that dies (-1: without limit).
    Starts a local Ray (or connects to ``address``) when none is running. The result is lazy:
    iterate it, ``take_all()`` or ``write_parquet(...)``.
    """
    _ray()
    from .decoding import resolve_options
    from .translate import BATCH_TYPES
    _positive_int("threads_per_actor", threads_per_actor)
    _positive_int("batch_size", batch_size)
    _positive_int("max_batch_size", max_batch_size)
    if batch_type not in BATCH_TYPES:
        raise ValueError(f"batch_type must be one of {BATCH_TYPES}, not {batch_type!r}")
    if "target_prefix" in options:
        raise ValueError("target_prefix is per sentence: it is not supported over a dataset")
    resolve_options(options)  # unknown names: a TypeError now, not in every actor
    model_dir = os.path.abspath(os.fspath(model_dir))
    tokenizer_dir = os.path.abspath(os.fspath(tokenizer_dir)) if tokenizer_dir else None
    _ensure_ray(address)
    if check_nodes:
        _check_model_on_nodes(model_dir, tokenizer_dir)
    ds = _as_dataset(data, text_column, id_column, batch_size)
    options = dict(options, max_batch_size=max_batch_size, batch_type=batch_type)
    return _map(ds, _TranslateActor, (model_dir, tokenizer_dir, threads_per_actor, text_column, options),
                actors, threads_per_actor, batch_size, max_restarts, max_task_retries)


def _materialized(ds) -> bool:
    """Whether ``ds`` is in the object store already (from_items, from_arrow, materialize())."""
    from ray.data.dataset import MaterializedDataset
    return isinstance(ds, MaterializedDataset)


def _map(ds, actor, args, actors, threads_per_actor: int, batch_size: int, max_restarts: int,
         max_task_retries: int):
    """``map_batches`` of ``actor`` over a fixed or autoscaling pool, order kept."""
    _check_fit(actors, threads_per_actor)
    ds.context.execution_options.preserve_order = True
    # Ray Data's actor pools already restart dead actors and retry their batches without limit
    # (-1, -1); other values are passed on
    retries = {k: v for k, v in (("max_restarts", max_restarts), ("max_task_retries", max_task_retries)) if v != -1}
    return ds.map_batches(actor, fn_constructor_args=args, batch_size=batch_size, batch_format="pyarrow",
                          compute=_pool(actors, threads_per_actor, not _materialized(ds)),
                          num_cpus=threads_per_actor, **retries)


# -- embeddings ------------------------------------------------------------------------------------
class _Embedder:
    """Texts -> [n, d] float32 vectors: ``cyformer.TextEncoder`` when it exists, else
    ``Encoder`` over the folder's tokenizer (ids as ``Tokenizer.encode`` gives them, source
    side, cut to the model's ``max_len`` positions)."""

    def __init__(self, model_dir: str, pooling: Optional[str], normalize: Optional[bool], max_batch_size: int):
        import cyformer
        self.pooling, self.normalize, self.max_batch_size = pooling, normalize, max_batch_size
        text_encoder = getattr(cyformer, "TextEncoder", None)
        if text_encoder is not None:
            self.text_encoder = text_encoder.from_pretrained(model_dir)
            self.encoder = self.tokenizer = None
        else:  # until TextEncoder lands: Encoder over the folder's tokenizer
            from .encoder import Encoder
            from .tokenizer import Tokenizer
            self.text_encoder = None
            self.encoder = Encoder.from_pretrained(model_dir)
            self.tokenizer = Tokenizer.from_pretrained(model_dir)

    def __call__(self, texts: List[str]):
        import numpy as np
        if self.text_encoder is not None:
            return np.asarray(self.text_encoder.embed(texts, batch_size=self.max_batch_size, pooling=self.pooling,
                                                      normalize=self.normalize), dtype=np.float32)
        limit = self.encoder.config.max_len
        ids = [s[:limit] for s in self.tokenizer.encode(texts, side="source")]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), self.encoder.config.d_model), np.float32)
        for s in range(0, len(order), self.max_batch_size):
            chunk = order[s:s + self.max_batch_size]
            out[chunk] = self.encoder.embed([ids[i] for i in chunk], pooling=self.pooling or "mean",
                                            normalize=bool(self.normalize))
        return out


class _EmbedActor(_Worker):
    def __init__(self, model_dir: str, threads: int, text_column: str, pooling: Optional[str],
                 normalize: Optional[bool], max_batch_size: int):
        super().__init__(model_dir, threads)
        self.embedder = _Embedder(model_dir, pooling, normalize, max_batch_size)
        self.text_column = text_column
        # the vector size, for batches whose every row is an error
        self.width = int(self.embedder(["x"]).shape[1])

    def __call__(self, table):
        import numpy as np
        pa = _pa()
        texts, errors = self._texts(table, self.text_column)
        rows = self._run_each(lambda ts: list(self.embedder(ts)), texts, errors, None)
        values = np.zeros((len(rows), self.width), np.float32)
        missing = [r is None or e is not None for r, e in zip(rows, errors)]
        for i, r in enumerate(rows):
            if not missing[i]:
                values[i] = r
        column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), self.width,
                                                   mask=pa.array(missing, pa.bool_()))
        if "error" in table.column_names:
            table = table.drop_columns(["error"])
        return table.append_column("embedding", column).append_column("error", pa.array(errors, pa.string()))


def embed_dataset(data, model_dir: str, *, text_column: str = "text", id_column: str = "id",
                  pooling: Optional[str] = None, normalize: Optional[bool] = None, actors: Union[int, Tuple[int, int], None] = None,
                  threads_per_actor: int = 1, batch_size: int = DEFAULT_BATCH_SIZE, max_batch_size: int = 32,
                  max_restarts: int = -1, max_task_retries: int = -1, address: Optional[str] = None,
                  check_nodes: bool = True):
    """Embed a Ray Dataset (or text / Parquet files) with an encoder-only model folder, as
    ``translate_dataset`` translates: the same input, pool and fault handling, with a column
    ``embedding`` (fixed-size list of float32, ``d_model`` long; null for an error row)
    instead of ``translation``. ``pooling`` ("mean", "max", "cls") and ``normalize`` are
    ``TextEncoder.embed``'s (None: the folder's own, else mean without normalisation); a
    value the model refuses fails the job as its actors start. ``max_batch_size`` texts are
    encoded at a time."""
    _ray()
    _positive_int("threads_per_actor", threads_per_actor)
    _positive_int("batch_size", batch_size)
    _positive_int("max_batch_size", max_batch_size)
    model_dir = os.path.abspath(os.fspath(model_dir))
    _ensure_ray(address)
    if check_nodes:
        _check_model_on_nodes(model_dir, None)
    ds = _as_dataset(data, text_column, id_column, batch_size)
    return _map(ds, _EmbedActor, (model_dir, threads_per_actor, text_column, pooling, normalize,
                                  max_batch_size), actors, threads_per_actor, batch_size, max_restarts,
                max_task_retries)


def iter_rows_in_order(ds, columns: Iterable[str]) -> Iterator[Dict[str, list]]:
    """The dataset's batches as dicts of Python lists of ``columns``, in order."""
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield {c: table.column(c).to_pylist() for c in columns}
