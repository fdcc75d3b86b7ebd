"""TensorBoard events files: records checksummed in C, written in bursts without a thread.

Every record of an events file carries two masked CRC-32C checksums (of its length and of its
data): mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2^32. Without TensorFlow, tensorboard
computes them in pure Python, about 3 ms for one 10 kB weight histogram, on the writer thread
but under the GIL, so training waits for it. `use_fast_checksums()` makes tensorboard's record
writer use google-crc32c's C implementation instead: the same bytes, a few microseconds.

`EventsFile` is one events file as torch's `SummaryWriter` (tensorboard's `EventFileWriter`)
names, starts and fills it, byte for byte the same records, but its events are held in memory
and written at `flush`, whole records or none, by the caller: no writer thread per file, no
queue, no open/append/close per event.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import google_crc32c

_MASK_DELTA = 0xA282EAD8
FILE_VERSION = "brain.Event:2"
_WRITER = "tensorboard.summary.writer.event_file_writer"  # what EventFileWriter says it is
_LENGTH, _CRC = struct.Struct("<Q").pack, struct.Struct("<I").pack


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def use_fast_checksums() -> None:
    """Point tensorboard's record writer at `masked_crc32c` (idempotent)."""
    from tensorboard.summary.writer import record_writer

    record_writer.masked_crc32c = masked_crc32c


def record(data: bytes) -> bytes:
    """`data` framed as one record (tensorboard's RecordWriter.write): little-endian uint64
    length, masked crc of the length, the data, masked crc of the data."""
    header = _LENGTH(len(data))
    return b"".join((header, _CRC(masked_crc32c(header)), data, _CRC(masked_crc32c(data))))


def _next_uid() -> int:
    """The number that ends an events file's name: tensorboard's own process-wide counter, so
    names never collide with those of SummaryWriters in the same process."""
    from tensorboard.summary.writer.event_file_writer import _global_uid

    return _global_uid.get()


class EventsFile:
    """`<logdir>/events.out.tfevents.<time>.<host>.<pid>.<n>`, created at once with its
    file-version event. `purge_step`: TensorBoard hides the events at and after that step
    from older files of the directory (what `SummaryWriter(purge_step=...)` writes).

    `add` frames an event (the caller sets its wall time and step); `flush` appends the
    records held so far. A failed write is cut back off the file and its records are kept
    for the next flush; the OSError names the file."""

    def __init__(self, logdir, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog, SourceMetadata

        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{_next_uid()}"
        self.path = os.path.join(str(logdir), name)
        self._records: list[bytes] = []
        self.add(Event(wall_time=time.time(), file_version=FILE_VERSION,
                       source_metadata=SourceMetadata(writer=_WRITER)))
        self._write(os.O_TRUNC)
        if purge_step is not None:
            self.add(Event(wall_time=time.time(), step=purge_step, file_version=FILE_VERSION))
            self.add(Event(wall_time=time.time(), step=purge_step,
                           session_log=SessionLog(status=SessionLog.START)))

    def add(self, event) -> None:
        """An `Event` proto, written at the next `flush`."""
        self._records.append(record(event.SerializeToString()))

    def flush(self) -> None:
        if self._records:
            self._write(os.O_APPEND)

    def _write(self, how: int) -> None:
        data = memoryview(b"".join(self._records))
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | how, 0o666)
        except OSError as e:
            raise OSError(e.errno, e.strerror, self.path) from e
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError as e:
                os.ftruncate(fd, start)
                raise OSError(e.errno, e.strerror, self.path) from e
        finally:
            os.close(fd)
        self._records.clear()


def scalars_event(step: int, pairs, wall_time: float | None = None):
    """One `Event` holding the scalars of `pairs` ((tag, value), a float32 `simple_value`
    each, as SummaryWriter's `scalar` writes them; a None value is left out) at `step`."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    values = [Summary.Value(tag=tag, simple_value=float(x)) for tag, x in pairs if x is not None]
    return Event(wall_time=time.time() if wall_time is None else wall_time, step=step,
                 summary=Summary(value=values))
