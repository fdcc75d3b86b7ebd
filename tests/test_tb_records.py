"""Event-file checksums in C give exactly tensorboard's own (pure Python) values, files written
with them read back through tensorboard's checksum-verifying reader, and an `EventsFile` holds
exactly what a SummaryWriter writes for the same events."""

from __future__ import annotations

import os
import random
import re
import socket
import time

import pytest
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

from regablate.tensorboard.records import EventsFile, masked_crc32c, use_fast_checksums


def test_the_checksum_is_tensorboards_own():
    rng = random.Random(0)
    for n in (0, 1, 7, 8, 12, 255, 4096, 10_001):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert masked_crc32c(data) == reference(data), n


def test_events_written_with_it_read_back_verified(tmp_path):
    import torch
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from torch.utils.tensorboard import SummaryWriter

    use_fast_checksums()
    with SummaryWriter(str(tmp_path)) as w:
        w.add_scalar("loss", 0.5, 1)
        w.add_histogram("w", torch.randn(5000), 1)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    records = [Event.FromString(r) for r in RawEventFileLoader(str(events)).Load()]
    tags = [v.tag for e in records for v in e.summary.value]
    assert tags == ["loss", "w"]
    raw = bytearray(events.read_bytes())  # a flipped data byte fails the check: the reader checks
    raw[-10] ^= 0xFF
    events.write_bytes(bytes(raw))
    assert len(list(RawEventFileLoader(str(events)).Load())) < len(records)


def events(path) -> list[bytes]:
    """An events file's events (checksums verified), wall times cleared."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    out = []
    for raw in RawEventFileLoader(str(path)).Load():
        e = Event.FromString(raw)
        e.wall_time = 0
        out.append(e.SerializeToString())
    return out


@pytest.mark.parametrize("purge_step", [None, 0, 7])
def test_an_events_file_is_the_one_summary_writer_writes(tmp_path, purge_step):
    import torch
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "theirs"), purge_step=purge_step) as w:
        w.add_scalar("loss", 0.5, 7)
        w.add_histogram("w", torch.arange(10.0), 8)
        w.file_writer.add_summary(Summary(value=[Summary.Value(tag="a", simple_value=1.0)]), 0)
    f = EventsFile(tmp_path / "ours" / "new", purge_step)
    name = rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}\.{os.getpid()}\.\d+"
    assert re.fullmatch(name, os.path.basename(f.path))
    assert len(events(f.path)) == 1  # the file version is on disk at once, as SummaryWriter's
    (hist,) = (v.histo for e in map(Event.FromString, events(next((tmp_path / "theirs").iterdir())))
               for v in e.summary.value if v.tag == "w")
    for step, value in ((7, Summary.Value(tag="loss", simple_value=0.5)), (8, Summary.Value(tag="w", histo=hist)),
                        (0, Summary.Value(tag="a", simple_value=1.0))):
        f.add(Event(wall_time=time.time(), step=step, summary=Summary(value=[value])))
    f.flush()
    (theirs,) = (tmp_path / "theirs").iterdir()
    assert events(f.path) == events(theirs)


def test_a_failed_write_is_cut_back_off_and_goes_out_whole_at_the_next_flush(tmp_path, monkeypatch):
    from tensorboard.compat.proto.event_pb2 import Event

    f = EventsFile(tmp_path)
    f.add(Event(step=1, file_version="x"))
    f.flush()
    good = open(f.path, "rb").read()
    write = os.write

    def half_then_full(fd, data):
        write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    f.add(Event(step=2, file_version="y"))
    f.add(Event(step=3, file_version="z"))
    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError) as e:
        f.flush()
    monkeypatch.setattr(os, "write", write)
    assert e.value.filename == f.path and e.value.errno == 28
    assert open(f.path, "rb").read() == good
    f.flush()
    assert [Event.FromString(e).step for e in events(f.path)] == [0, 1, 2, 3]


def test_an_unwritable_directory_is_an_os_error_naming_it(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(OSError):
        EventsFile(tmp_path / "afile" / "tb")
