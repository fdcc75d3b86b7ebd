"""TensorBoard histograms exactly as torch's `SummaryWriter.add_histogram` makes them, cheaper.

SummaryWriter buckets the values (as float64) into its default bins: the edges -1e20 < ... <
-1e-12 < 0 < 1e-12 < ... < 1e20, each 1.1 times the one before (1549 edges), and torch's
`make_histogram` keeps the buckets from the one before the first non-empty bucket to the last
non-empty one, each named by its right edge. `histogram` gives the same HistogramProto (same
edges, counts, min, max, num, sum and sum of squares) from the edges built once as an array,
counted the way `np.histogram` counts them for uneven bins (sort, then search the edges), and
its edges and counts encoded as packed doubles straight from the arrays rather than one Python
float at a time: a few times faster.
"""

from __future__ import annotations

import numpy as np


def _default_edges() -> np.ndarray:
    """SummaryWriter's `default_bins`, computed the same way (repeated multiplication)."""
    v, pos, neg = 1e-12, [], []
    while v < 1e20:
        pos.append(v)
        neg.append(-v)
        v *= 1.1
    return np.array(neg[::-1] + [0] + pos, dtype=np.float64)


EDGES = _default_edges()
_BLOCK = 65536  # np.histogram's


def histogram(values: np.ndarray):
    """The HistogramProto of `values` (any shape, converted to float64) over `EDGES`; raises
    ValueError, as torch does, if there are no values or none falls in a bucket (all NaN)."""
    from tensorboard.compat.proto.summary_pb2 import HistogramProto

    x = np.asarray(values).astype(np.float64, copy=False).reshape(-1)
    if x.size == 0:
        raise ValueError("The input has no element.")
    # as np.histogram counts uneven bins: per block of values sorted, the number below each
    # edge (the last edge inclusive)
    below = np.zeros(EDGES.size, np.intp)
    for i in range(0, x.size, _BLOCK):
        s = np.sort(x[i:i + _BLOCK])
        below[:-1] += s.searchsorted(EDGES[:-1], "left")
        below[-1] += s.searchsorted(EDGES[-1], "right")
    counts = np.diff(below)
    filled = np.flatnonzero(counts)
    if filled.size == 0:
        raise ValueError("The histogram is empty, please file a bug report.")
    start, end = int(filled[0]), int(filled[-1]) + 1
    # TensorBoard only shows right edges: an empty bucket before the first keeps its left edge
    kept = counts[start - 1:end] if start > 0 else np.concatenate(([0], counts[:end]))
    head = HistogramProto(min=x.min(), max=x.max(), num=x.size, sum=x.sum(), sum_squares=x.dot(x))
    return HistogramProto.FromString(b"".join((head.SerializeToString(), _packed(6, EDGES[start:end + 1]),
                                               _packed(7, kept))))


def _packed(field: int, values: np.ndarray) -> bytes:
    """A packed `repeated double` field (how protobuf writes one: tag, byte length, the values
    as little-endian doubles), without a Python float per value."""
    data = values.astype("<f8").tobytes()
    return bytes((field << 3 | 2,)) + _varint(len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
