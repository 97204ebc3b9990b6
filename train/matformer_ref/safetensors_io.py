"""Minimal safetensors reader/writer using numpy only.

BF16 tensors are held in numpy as uint16 bit patterns (numpy has no bfloat16).
Use `f32_to_bf16_bits` / `bf16_bits_to_f32` to convert; f32 -> bf16 rounds to
nearest, ties to even (NaN stays NaN).

File layout: u64 little-endian header length N, N bytes of JSON header
(padded with spaces to a multiple of 8), then the data buffer. Tensors are
written in sorted name order, contiguous, with exact data_offsets.
"""
import json
import struct

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bit patterns
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def f32_to_bf16_bits(a):
    """float32 array -> uint16 bf16 bit patterns, round-to-nearest-even."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    u = a.view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    r = ((u + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        r[nan] = ((u[nan] >> 16).astype(np.uint16)) | 0x0040  # quiet NaN
    return r


def bf16_bits_to_f32(b):
    """uint16 bf16 bit patterns -> float32 (exact)."""
    b = np.ascontiguousarray(np.asarray(b, dtype=np.uint16))
    return (b.astype(np.uint32) << 16).view(np.float32)


def save_file(tensors, path, dtypes=None, metadata=None):
    """Write a safetensors file.

    tensors: dict name -> numpy array. dtypes: optional dict name -> safetensors
    dtype string; by default float32 -> "F32", uint16 -> "BF16" (bit patterns),
    other numpy dtypes map naturally. metadata: optional dict str -> str.
    """
    dtypes = dict(dtypes or {})
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        dt = dtypes.get(name)
        if dt is None:
            if arr.dtype == np.float32:
                dt = "F32"
            elif arr.dtype == np.uint16:
                dt = "BF16"
            else:
                inv = {v.str: k for k, v in _DTYPES.items()}
                dt = inv.get(arr.dtype.newbyteorder("<").str) or inv[arr.dtype.str]
        arr = np.ascontiguousarray(arr.astype(_DTYPES[dt], copy=False))
        data = arr.tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (-(8 + len(hjson))) % 8
    hjson += b" " * pad
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for data in blobs:
            f.write(data)


def load_file(path, with_metadata=False):
    """Read a safetensors file -> dict name -> numpy array (BF16 as uint16).

    Validates that data offsets are contiguous and cover the buffer exactly.
    With with_metadata=True returns (tensors, metadata, dtypes).
    """
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    buf = memoryview(raw)[8 + n:]
    tensors, dtypes = {}, {}
    spans = []
    for name, info in header.items():
        dt = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if end - start != count * dt.itemsize or end > len(buf):
            raise ValueError(f"{path}: bad data_offsets for {name}")
        spans.append((start, end))
        tensors[name] = np.frombuffer(buf[start:end], dtype=dt).reshape(shape)
        dtypes[name] = info["dtype"]
    spans.sort()
    pos = 0
    for s, e in spans:
        if s != pos:
            raise ValueError(f"{path}: data not contiguous at {s}")
        pos = e
    if pos != len(buf):
        raise ValueError(f"{path}: {len(buf) - pos} trailing bytes")
    if with_metadata:
        return tensors, meta, dtypes
    return tensors
