"""A numeric variable of a MATLAB v5 file (as the Flowers102 labels are), read without scipy."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from fair.errors import FairError

_MI = {  # MAT v5 numeric type code -> numpy dtype
    1: "i1", 2: "u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 9: "<f8", 12: "<i8", 13: "<u8"}


def _mat_elements(buf: bytes):
    """(type, payload) of the data elements of a little-endian MAT v5 stream."""
    pos = 0
    while pos + 8 <= len(buf):
        mtype, nbytes = struct.unpack_from("<II", buf, pos)
        if mtype >> 16:                                    # small element: 4 bytes of data in the tag
            yield mtype & 0xFFFF, buf[pos + 4: pos + 4 + (mtype >> 16)]
            pos += 8
            continue
        yield mtype, buf[pos + 8: pos + 8 + nbytes]
        pos += 8 + nbytes + (-nbytes % 8 if mtype != 15 else 0)


def read_mat_array(path: Path, var: str) -> np.ndarray:
    """Variable `var` of the MATLAB v5 file at `path`, flattened to float64 (numeric variables only)."""
    buf = path.read_bytes()
    if len(buf) < 128 or buf[126:128] != b"IM":
        raise FairError(f"{path.name} is not a little-endian MATLAB v5 file; re-download it")
    todo = list(_mat_elements(buf[128:]))
    while todo:
        mtype, data = todo.pop(0)
        if mtype == 15:                                    # miCOMPRESSED: one more element inside
            todo[:0] = list(_mat_elements(zlib.decompress(data)))
            continue
        if mtype != 14:                                    # only miMATRIX elements hold variables
            continue
        sub = list(_mat_elements(data))
        if len(sub) < 4:
            continue
        name = sub[2][1].decode("latin-1")
        if name == var and sub[3][0] in _MI:
            return np.frombuffer(sub[3][1], dtype=_MI[sub[3][0]]).astype(np.float64)
    raise FairError(f"{path.name} has no numeric variable {var!r}; is it the right file?")

