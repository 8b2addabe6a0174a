"""The header of a `.npy` feature file: where its data starts, its shape and dtype (readers that map or
copy the rows without loading the file: HDF5 external storage, inspection)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def npy_data_offset(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """Byte offset of the data section of a .npy file, with its shape and dtype (checks the size)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        # format 3.0 differs from 2.0 only in the header's text encoding (utf-8), same layout
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise ValueError(f"{path}: truncated .npy ({actual} bytes, header says {expected})")
    return offset, tuple(shape), dtype
