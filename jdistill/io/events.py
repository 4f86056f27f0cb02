"""TensorBoard event files written synchronously: each logged step is on disk (or in cloud storage) on return.

tensorboardX's `SummaryWriter` queues events for a background thread that writes them every `flush_secs` (120 s by
default), so a process killed in its first minutes leaves an empty event file, and its `flush()` does not wait for
the queue. `ScalarEvents` writes the TFRecord framing itself (length, masked CRC-32C of the length, the serialized
`Event` proto, its masked CRC) through `jdistill.io.fs.Appender`, so local and gs:// folders work alike.

Resuming at step s appends a new file whose first event is `SessionLog.START` at step s + 1: TensorBoard then drops
the earlier files' events from step s + 1 on (those written after the checkpoint the run resumed from), so each step
is shown once. `read_scalars` reads a folder back with the same rule (for tests and for readers without TensorBoard).
"""

from __future__ import annotations

import socket
import struct
import time

from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.record_writer import masked_crc32c as _masked_crc

from jdistill.io import fs


def record(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, `data`, masked CRC of `data`."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data))


class ScalarEvents:
    """A new event file in `logdir` (local or gs://); `first_step` > 1 marks a resume (see the module docstring)."""

    def __init__(self, logdir: fs.PathLike, *, first_step: int = 1):
        logdir = fs.path(logdir)
        if not fs.is_remote(logdir):
            logdir.mkdir(parents=True, exist_ok=True)
        # time_ns in the name: a resumed file sorts after the files it continues, even within one second
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{time.time_ns()}"
        self.path = logdir / name
        self._file = fs.Appender(self.path, sync=True)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if first_step > 1:
            self._write(Event(wall_time=time.time(), step=first_step, session_log=SessionLog(status=SessionLog.START)))

    def _write(self, event: Event) -> None:
        self._file.append(record(event.SerializeToString()))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event with every scalar of `values` at `step`, on disk on return."""
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        self._write(Event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        self._file.close()


def read_events(path: fs.PathLike) -> list[Event]:
    """The events of one file; a record cut short by a kill (or with a bad CRC) ends the file."""
    data = fs.path(path).read_bytes()
    events, at = [], 0
    while at + 12 <= len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        body = data[at + 12 : at + 12 + length]
        footer = data[at + 12 + length : at + 16 + length]
        if len(footer) < 4 or struct.unpack("<I", data[at + 8 : at + 12])[0] != _masked_crc(header):
            break
        if struct.unpack("<I", footer)[0] != _masked_crc(body):
            break
        event = Event()
        event.ParseFromString(body)
        events.append(event)
        at += 16 + length
    return events


def read_scalars(logdir: fs.PathLike) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the event files in `logdir`, read in name order like TensorBoard; a
    `SessionLog.START` at step s drops the values read so far from step s on."""
    logdir = fs.path(logdir)
    scalars: dict[str, dict[int, float]] = {}
    for file in sorted(logdir.iterdir(), key=lambda p: p.name):
        if ".tfevents." not in file.name:
            continue
        for event in read_events(file):
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars
