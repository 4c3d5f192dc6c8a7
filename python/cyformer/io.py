"""Checkpoints: safetensors files, read memory-mapped and validated, written atomically.

The safetensors layout: an 8-byte little-endian header length, a JSON header mapping
each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into
the data section that follows), then the raw little-endian data. It is the format
PyTorch and Hugging Face users already exchange, so our checkpoints load there too.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
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
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A weight file that is truncated, corrupt, or does not match the model."""


def atomic_write_bytes(path: str, chunks) -> None:
    """Write ``chunks`` (bytes or an iterable of buffers) to ``path`` atomically.

    The data goes to a temporary file in the same folder, is fsynced, then renamed over
    ``path``: a crash mid-write leaves the previous file intact.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = [chunks]
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
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
    """Header bytes (length prefix + JSON padded to 8 bytes) for tensors laid out in order."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape in tensors:
        dtype = np.dtype(dtype)
        code = _CODES.get(dtype.newbyteorder("<") if dtype.byteorder == "=" else dtype)
        if code is None:
            raise TypeError(f"{name}: dtype {dtype} cannot be stored in safetensors")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
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
    """(header, data_start, file_size) after validating the header against the file."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file "
                                  f"(truncated?)")
        (n,) = struct.unpack("<Q", prefix)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: header length {n} does not fit a {size}-byte file "
                                  f"(truncated or not safetensors)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + n
    data_len = size - data_start
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}") from None
        if any(s < 0 for s in shape) or begin < 0 or end < begin:
            raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape or offsets")
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r}: {end - begin} bytes do not hold "
                                  f"{info['dtype']}{list(shape)}")
        if end > data_len:
            raise CheckpointError(f"{path}: tensor {name!r} ends at byte {end} of the data, but "
                                  f"the file holds only {data_len} bytes of data (truncated)")
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


def load_safetensors(path: str, mmap: bool = True) -> Dict[str, np.ndarray]:
    """Named arrays, memory-mapped (copy-on-write) when ``mmap``; BF16 is widened to F32."""
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
        if info["dtype"] == "BF16":
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
