"""Checkpoints: safetensors files, read memory-mapped and validated, written atomically.

The safetensors layout: an 8-byte little-endian header length, a JSON header mapping
each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into
the data section that follows), then the raw little-endian data. It is the format
PyTorch and Hugging Face users already exchange, so our checkpoints load there too.

Files from elsewhere are read within the safetensors reader's own bounds (header size, JSON
nesting; ``read_json`` applies them to config, tokenizer and vocabulary files too), so a
corrupt or hostile file is a CheckpointError naming it, never a RecursionError or a
MemoryError. Files written here get the mode ``open()`` would give them under the umask.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import threading
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to float32 on read
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_CODES = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16",
          np.dtype("<i8"): "I64", np.dtype("<i4"): "I32", np.dtype("<i2"): "I16",
          np.dtype("i1"): "I8", np.dtype("u1"): "U8", np.dtype("?"): "BOOL"}
# The limits of the safetensors format's own reader, so that a file one side reads the other
# reads too: huggingface/safetensors (safetensors/src/tensor.rs) refuses a header longer than
# MAX_HEADER_SIZE = 100_000_000 bytes, and parses it with serde_json, whose Deserializer starts
# with ``remaining_depth: 128`` and fails when an opening bracket takes it to 0: 127 nested
# arrays/objects parse, 128 do not. Python's json would recurse ~1000 levels, then raise
# RecursionError; the same bounds apply to every JSON file a model folder holds.
MAX_HEADER_BYTES = 100_000_000
MAX_JSON_BYTES = 100_000_000
MAX_JSON_DEPTH = 127
MAX_DIMS = 32      # numpy 1.x's limit (2.x allows 64); no real tensor comes close


class CheckpointError(ValueError):
    """A weight file that is truncated, corrupt, or does not match the model."""


# -- bounded JSON ---------------------------------------------------------------------------
_KEEP = b'[]{}"'
_NOT_KEPT = bytes(sorted(set(range(256)) - set(_KEEP)))
_STEP = np.zeros(256, np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_QUOTE = ord('"')


def json_depth(raw: bytes, limit: Optional[int] = None) -> int:
    """How deeply arrays and objects nest in the JSON text ``raw``; brackets inside strings
    do not count. Stops early, returning a depth above ``limit``, once it passes ``limit``.

    Linear time at C/numpy speed, no recursion, on any input: escaped backslashes and then
    escaped quotes are deleted (a backslash run pairs up from its left, as the JSON decoder
    reads it), leaving only quotes that open or close strings; of those and the brackets, a
    bracket is inside a string when an odd number of quotes precede it. The running sum of
    the others' +1/-1 steps (in 1 MiB chunks) is the depth. The count stops where the depth
    would go below 0, where the decoder stops too (any text after a complete value, or a
    backslash outside a string, is an error at that point, so nothing after it can nest).
    """
    kept = bytes(raw).replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_KEPT)
    codes = np.frombuffer(kept, np.uint8)
    depth = best = 0
    quotes = 0
    chunk = 1 << 20
    for i in range(0, len(codes), chunk):
        c = codes[i:i + chunk]
        is_quote = c == _QUOTE
        outside = ((np.cumsum(is_quote, dtype=np.int64) + quotes) & 1) == 0
        quotes += int(is_quote.sum())
        run = np.cumsum(_STEP[c] * outside, dtype=np.int64) + depth
        below = np.flatnonzero(run < 0)
        if len(below):
            run = run[:below[0]]
        if len(run):
            best = max(best, int(run.max()))
        if len(below) or (limit is not None and best > limit):
            break
        depth = int(run[-1])
    return best


def parse_json(text, source: str, max_depth: Optional[int] = None):
    """``json.loads(text)`` with nesting bounded by ``max_depth``; every failure (bad
    UTF-8, too deep, not JSON, a number too long for int()) is a CheckpointError that
    starts with ``source`` (a path, or a path and what part of the file this is)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{source} is not valid UTF-8: {e}") from None
    else:
        raw = str(text).encode("utf-8", "surrogatepass")
    if max_depth is None:
        max_depth = MAX_JSON_DEPTH
    depth = json_depth(raw, max_depth)
    if depth > max_depth:
        raise CheckpointError(f"{source} nests arrays/objects more than {max_depth} levels deep; at most "
                              f"{max_depth} are read, as by the safetensors format's own reader (corrupt?)")
    try:
        return json.loads(text)
    except RecursionError:  # pragma: no cover - the depth scan comes first
        raise CheckpointError(f"{source} nests too deeply to parse") from None
    except ValueError as e:  # JSONDecodeError, and int() refusing a 4300+ digit number
        raise CheckpointError(f"{source} is not valid JSON: {e}") from None


def read_json(path: str, expect: Optional[type] = None, max_bytes: Optional[int] = None, *,
              with_text: bool = False):
    """The JSON value in the file ``path``, read with bounded size (``max_bytes``, default
    MAX_JSON_BYTES) and nesting (MAX_JSON_DEPTH).

    ``expect`` (e.g. ``dict``) is the type the top-level value must have. A missing file
    raises FileNotFoundError; anything wrong with its contents, CheckpointError naming
    ``path`` and the problem. ``with_text``: return (value, the file's text), for a reader
    of its own (``tokenizers``) that gets only a file checked here.
    """
    path = os.fspath(path)
    if max_bytes is None:
        max_bytes = MAX_JSON_BYTES
    with open(path, "rb") as f:
        # never more than max_bytes + 1: /dev/zero or a growing file stays bounded; a regular
        # file's size first, so a small file does not cost a max_bytes buffer
        size = os.fstat(f.fileno()).st_size
        raw = f.read(min(size, max_bytes) + 1)
        if len(raw) > size:   # a file that grew, or one that reports no size (/dev/zero, a pipe)
            raw += f.read(max_bytes + 1 - len(raw))
    if len(raw) > max_bytes:
        raise CheckpointError(f"{path} is larger than {max_bytes} bytes, the limit for a JSON file "
                              f"(not a config or vocabulary?)")
    value = parse_json(raw, path)
    if expect is not None and not isinstance(value, expect):
        what = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise CheckpointError(f"{path} must hold {what}, not {_json_type(value)}")
    if with_text:
        return value, raw.decode("utf-8")
    return value


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- file modes -----------------------------------------------------------------------------
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    Linux reports it in /proc/self/status (``Umask:``, since 4.7). Elsewhere the only way
    is to set a mask and restore it; the probe sets the strict 077, so a file another
    thread creates in that instant is, at worst, more private than asked, and a lock keeps
    our own probes from interleaving.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``os.mkdir`` gives a new folder: 0777 less the umask."""
    return 0o777 & ~current_umask()


def atomic_write_bytes(path: str, chunks) -> None:
    """Write ``chunks`` (bytes or an iterable of buffers) to ``path`` atomically.

    The data goes to a temporary file in the same folder, is fsynced, then renamed over
    ``path``: a crash mid-write leaves the previous file intact. The file gets the mode a
    plain ``open(path, "w")`` would give it (0666 less the umask), not mkstemp's 0600.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = [chunks]
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, file_mode())
        else:  # pragma: no cover - Windows before 3.13
            os.chmod(tmp, file_mode())
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def atomic_copy_file(src: str, dest: str, chunk: int = 1 << 22) -> None:
    """Copy ``src`` to ``dest`` as atomic_write_bytes writes (temporary file, fsync, rename;
    the umask's mode)."""
    with open(src, "rb") as f:
        atomic_write_bytes(dest, iter(lambda: f.read(chunk), b""))


def fsync_dir(folder: str) -> None:
    """Make a rename inside ``folder`` durable (where the file system allows it)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some file systems cannot fsync a directory
        pass


def safetensors_header(tensors: Iterable[Tuple[str, np.dtype, Tuple[int, ...]]],
                       metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """Header bytes (length prefix + JSON padded to 8 bytes) for tensors laid out in order.

    A dtype is a NumPy dtype or a safetensors code ("BF16": bf16 bits held as uint16)."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape in tensors:
        if isinstance(dtype, str) and dtype in _DTYPES:
            code, itemsize = dtype, _DTYPES[dtype].itemsize
        else:
            dtype = np.dtype(dtype)
            code = _CODES.get(dtype.newbyteorder("<") if dtype.byteorder == "=" else dtype)
            if code is None:
                raise TypeError(f"{name}: dtype {dtype} cannot be stored in safetensors")
            itemsize = dtype.itemsize
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
        header[name] = {"dtype": code, "shape": [int(s) for s in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def save_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                     metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write named arrays, in the mapping's order, atomically."""
    arrays = [(name, np.ascontiguousarray(a)) for name, a in tensors.items()]
    head = safetensors_header([(n, a.dtype, a.shape) for n, a in arrays], metadata)
    atomic_write_bytes(path, [head] + [memoryview(a).cast("B") if a.size else b"" for _, a in arrays])


def read_safetensors_header(path: str) -> Tuple[dict, int, int]:
    """(header, data_start, file_size) after validating the header against the file.

    Everything a hostile file can put in the header is checked before any of it is used:
    the header length (at most MAX_HEADER_BYTES, as the safetensors reader), its nesting
    depth, and each entry's types and sizes (exact integers, no overflow), so that a bad
    file gives a CheckpointError naming the problem, never a TypeError or MemoryError.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file "
                                  f"(truncated?)")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header length {n} is over the {MAX_HEADER_BYTES}-byte limit "
                                  f"of the safetensors format (corrupt or not safetensors)")
        if 8 + n > size:
            raise CheckpointError(f"{path}: header length {n} does not fit a {size}-byte file "
                                  f"(truncated or not safetensors)")
        raw = f.read(n)
    header = parse_json(raw, f"{path}: the safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header ({_json_type(header)}, not a JSON object)")
    data_start = 8 + n
    data_len = size - data_start
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise CheckpointError(f"{path}: __metadata__ must be a JSON object of strings")
            continue
        begin, end = _check_entry(path, name, info, data_len)
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{path}: tensors {n0!r} and {n1!r} overlap")
    # as the safetensors spec: the tensors cover the data section to its end (a header length
    # cut short by corruption would otherwise shift every tensor by a few bytes)
    extent = max((e for _, e, _ in spans), default=0)
    if extent != data_len:
        raise CheckpointError(f"{path}: {data_len - extent} bytes after the last tensor (corrupt header "
                              f"length or trailing data)")
    return header, data_start, size


def _is_int(v) -> bool:
    return type(v) is int   # not bool, not a float that happens to be whole


def _check_entry(path: str, name: str, info, data_len: int) -> Tuple[int, int]:
    """(begin, end) of one tensor's bytes in the data section, after checking its entry."""
    where = f"{path}: tensor {_short(name)}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: the header entry is {_json_type(info)}, not a JSON object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise CheckpointError(f"{where}: the header entry has no {', '.join(missing)}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _DTYPES:
        raise CheckpointError(f"{where}: unknown dtype {_short(code)} (readable: {', '.join(_DTYPES)})")
    if not isinstance(shape, list) or not all(_is_int(s) for s in shape):
        raise CheckpointError(f"{where}: shape {_short(shape)} is not a list of integers")
    if any(s < 0 for s in shape):
        raise CheckpointError(f"{where}: shape {_short(shape)} has a negative dimension")
    if len(shape) > MAX_DIMS:
        raise CheckpointError(f"{where}: {len(shape)} dimensions; at most {MAX_DIMS} are read")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise CheckpointError(f"{where}: data_offsets {_short(offsets)} is not a pair of integers")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise CheckpointError(f"{where}: invalid data_offsets [{begin}, {end}]")
    itemsize = _DTYPES[code].itemsize
    elements = extent = 1   # exact Python ints: no wrap-around, however large the shape
    for s in shape:
        elements *= s
        extent *= max(s, 1)
    if extent * itemsize > np.iinfo(np.intp).max:   # numpy could not even describe it
        raise CheckpointError(f"{where}: shape {_short(shape)} is too large for any array")
    if end - begin != elements * itemsize:
        raise CheckpointError(f"{where}: {end - begin} bytes do not hold {code}{_short(shape)} "
                              f"({elements * itemsize} bytes)")
    if end > data_len:
        raise CheckpointError(f"{where} ends at byte {end} of the data, but the file holds only "
                              f"{data_len} bytes of data (truncated)")
    return begin, end


def load_safetensors(path: str, mmap: bool = True, widen_bf16: bool = True) -> Dict[str, np.ndarray]:
    """Named arrays, memory-mapped (copy-on-write) when ``mmap``; BF16 is widened to F32
    (``widen_bf16=False``: kept as its uint16 bits, mapped like the others)."""
    header, data_start, size = read_safetensors_header(path)
    if mmap and size > data_start:
        data = np.memmap(path, dtype=np.uint8, mode="c", offset=data_start, shape=(size - data_start,))
    else:
        with open(path, "rb") as f:
            f.seek(data_start)
            data = np.frombuffer(bytearray(f.read()), dtype=np.uint8)
    out: Dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        arr = data[begin:end].view(dtype).reshape(info["shape"])
        if info["dtype"] == "BF16" and widen_bf16:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return out


def safetensors_metadata(path: str) -> Dict[str, str]:
    header, _, _ = read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    return dict(meta) if isinstance(meta, dict) else {}


def load_flat_float32(path: str, layout, mmap: bool = True) -> Optional[np.ndarray]:
    """The data section as one float32 vector when the file holds exactly ``layout``.

    ``layout`` is [(name, shape), ...] in buffer order. When every tensor is F32, in that
    order and back to back from offset 0, the whole data section *is* the flat parameter
    buffer: it is returned memory-mapped copy-on-write (no copy; writes stay private).
    Otherwise None, and the caller copies tensor by tensor.
    """
    header, data_start, size = read_safetensors_header(path)
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    if [k for k, _ in entries] != [n for n, _ in layout]:
        # JSON object order is the writer's order; ours writes buffer order.
        return None
    offset = 0
    for (name, info), (_, shape) in zip(entries, layout):
        n = int(np.prod(shape, dtype=np.int64)) * 4
        if info["dtype"] != "F32" or tuple(info["shape"]) != tuple(shape) or \
                list(info["data_offsets"]) != [offset, offset + n]:
            return None
        offset += n
    if data_start % 4:
        return None
    if offset == 0:
        return np.zeros(0, dtype=np.float32)
    if mmap:
        return np.memmap(path, dtype=np.float32, mode="c", offset=data_start, shape=(offset // 4,))
    with open(path, "rb") as f:
        f.seek(data_start)
        buf = np.empty(offset // 4, dtype=np.float32)
        if f.readinto(memoryview(buf).cast("B")) != offset:
            raise CheckpointError(f"{path}: truncated while reading")
        return buf


def verify_checkpoint(path: str) -> None:
    """Check a cyformer ``model.safetensors`` against the crc32 in its metadata.

    Raises CheckpointError when the data does not match (or the file is malformed); files
    without a stored checksum (other writers) pass when their structure is sound.
    """
    import zlib

    header, data_start, size = read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    want = meta.get("crc32") if isinstance(meta, dict) else None
    if want is None:
        return
    crc = 0
    with open(path, "rb") as f:
        f.seek(data_start)
        while True:
            chunk = f.read(1 << 24)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
    if str(crc) != str(want):
        raise CheckpointError(f"{path}: the data does not match its checksum (crc32 {crc}, stored {want}); "
                              f"the file is corrupt")


# -- memory pages of mapped and anonymous arrays ---------------------------------------
_LIBC: list = []   # [the C library's madvise, or None where there is none], loaded once


def _madvise(a: np.ndarray, advice_name: str) -> None:
    # madvise(advice) over the whole memory pages inside `a`; nothing where it is not available
    import ctypes
    import mmap

    advice = getattr(mmap, advice_name, None)
    if advice is None or not a.flags.c_contiguous or a.nbytes == 0:
        return
    page = mmap.PAGESIZE
    start = a.ctypes.data
    lo = -(-start // page) * page
    hi = (start + a.nbytes) // page * page
    if hi <= lo:
        return
    if not _LIBC:
        try:
            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        except (OSError, AttributeError):
            fn = None
        _LIBC.append(fn)
    if _LIBC[0] is not None:
        _LIBC[0](ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), advice)


def release_pages(a: np.ndarray) -> None:
    """Hand the whole memory pages inside ``a`` back to the system (madvise MADV_DONTNEED):
    an anonymous page reads as zeros afterwards, a private file mapping's as the file. The
    caller no longer needs the values. Nothing happens where madvise is not available."""
    _madvise(a, "MADV_DONTNEED")


def huge_pages(a: np.ndarray, on: bool) -> None:
    """Allow (or forbid) transparent huge pages in ``a`` (NumPy asks for them in large arrays):
    while a buffer is filled sparsely, writing a bias between two matrices left in a file would
    fault in a whole 2 MiB page of them; once every value is written, huge pages serve the GEMMs."""
    if not file_mapped(a):
        _madvise(a, "MADV_HUGEPAGE" if on else "MADV_NOHUGEPAGE")


def file_mapped(a) -> bool:
    """Whether ``a`` is (a view of) a memory map of a file, whose released pages read the file
    again (``release_pages`` on any other array would zero values still needed)."""
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = getattr(a, "base", None)
    return False
