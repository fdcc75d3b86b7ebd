"""Event-file checksums in C give exactly tensorboard's own (pure Python) values, and files
written with them read back through tensorboard's checksum-verifying reader."""

from __future__ import annotations

import random

from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

from regablate.tb_records import masked_crc32c, use_fast_checksums


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
