"""The NDJSON log's bytes: its header line, one line per event, snapshot files, atomic file writes.

An event line holds the columns of an :class:`EventRow` in a fixed order,
the payload last and as it is stored (memimg's payloads are JSON, so the
line stays JSON and ``jq`` reads it)::

    {"seq":12,"tx":9,"ts":1764979200000000,"kind":"obj.set","target":7,"checksum":3016130573,"payload":[["x",1]]}
    {"seq":13,"tx":9,"ts":1764979200000000,"kind":"obj.set","target":7,"checksum":1401966207,"payload":[["y",2]],"end":true}

The last line of each transaction (and of each write) ends in
``"end":true`` (format version 2): a write that a crash cut short -- even
one cut between two whole lines -- leaves lines with no end mark after the
last one, which readers do not index and the next writer cuts off. (Version
1, a development build's, had no end marks: it is refused.)

The payload is written verbatim, not re-encoded, so that its bytes -- which
the checksum covers -- read back exactly; a payload that is not JSON (or
holds a line break) goes base64-encoded under ``"payload64"`` instead.
Reading a line matches that layout with one regular expression; a line that
does not match (edited by hand, torn, reformatted) is corrupt.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any, Final

import orjson

from memimg._errors import CorruptLogError, MemimgError
from memimg.core._rows import BAD_COLUMN, EventRow, SnapshotRow, event_checksum, row_intact

__all__ = [
    "END",
    "FORMAT_NAME",
    "NDJSON_VERSION",
    "encode_line",
    "encode_rows",
    "header_line",
    "line_ends",
    "parse_header",
    "parse_line",
    "parse_lines",
    "read_snapshot_file",
    "snapshot_bytes",
    "snapshot_header",
    "sync_directory",
    "write_atomically",
]

#: The value of the header line's ``"format"`` key: what tells an NDJSON memimg log from other files.
FORMAT_NAME: Final = "memimg-ndjson"

#: The version of the file's layout written in the header: 2 adds the end mark of a transaction's last line.
NDJSON_VERSION: Final = 2
#: How the last line of a transaction ends (with its line break). No other line can end so: a payload is a
#: JSON value, which never ends in ``,"end":true``, and holds no line break.
END: Final = b',"end":true}\n'

#: An event line up to its payload (the payload runs from there to the line's closing brace); a kind without
#: escapes (every kind memimg writes) is matched by the first, faster, alternative.
_HEAD = re.compile(
    rb'\{"seq":(\d+),"tx":(-?\d+),"ts":(-?\d+),"kind":("[^"\\]*"|"(?:[^"\\]|\\.)*"),"target":(-?\d+),'
    rb'"checksum":(\d+),"payload(64)?":'
)
#: How a line without the end mark ends, and how one with it does (neither with the line break).
_CLOSE, _CLOSE_END = b"}", END[:-1]
#: A whole line as memimg writes it -- a kind without escapes, the payload as JSON -- with its line break: what
#: :func:`parse_lines` reads in one match (any other line is read by :func:`parse_line`).
_PLAIN_LINE = re.compile(
    rb'\{"seq":(\d+),"tx":(-?\d+),"ts":(-?\d+),"kind":"([^"\\\n]*)","target":(-?\d+),'
    rb'"checksum":(\d+),"payload":([^\n]*)\}\n'
)
#: The end mark as the end of a plain line's payload group.
_END_MARK = END[:-2]


def header_line(version: int, first: int) -> bytes:
    """The first line of a log whose oldest kept event is *first*."""
    return orjson.dumps({"format": FORMAT_NAME, "version": version, "first": first}) + b"\n"


def parse_header(line: bytes, path: str) -> tuple[int, int]:
    """``(version, first)`` from a log's first line (without its line break).

    Raises:
        MemimgError: the line is not an NDJSON memimg header (the file is not such a log).
    """
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        header = None
    if (
        not isinstance(header, dict)
        or header.get("format") != FORMAT_NAME
        or type(header.get("version")) is not int
        or type(header.get("first")) is not int
        or header["first"] < 1
    ):
        raise MemimgError(
            f"{path!r} is not an NDJSON memimg log (its first line is not a {FORMAT_NAME} header); "
            "it was left untouched"
        )
    return header["version"], header["first"]


#: The JSON string of each kind written so far (there are a few dozen kinds).
_KIND_JSON: dict[str, bytes] = {}


def encode_line(row: EventRow, end: bool) -> bytes:
    """The line of *row*, with its line break; *end*: the last line of its transaction (the end mark)."""
    seq, tx, ts, kind, target, payload, checksum = row
    if type(payload) is not bytes:
        payload = bytes(payload)
    kind_json = _KIND_JSON.get(kind)
    if kind_json is None:
        kind_json = orjson.dumps(kind)
        if len(_KIND_JSON) < 1024:
            _KIND_JSON[kind] = kind_json
    start = b'{"seq":%d,"tx":%d,"ts":%d,"kind":%s,"target":%d,"checksum":%d,' % (
        seq,
        tx,
        ts,
        kind_json,
        target,
        checksum,
    )
    if b"\n" not in payload and b"\r" not in payload:
        try:
            orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
        else:
            return start + b'"payload":' + payload + (END if end else b"}\n")
    return start + b'"payload64":"' + base64.b64encode(payload) + (b'"' + END if end else b'"}\n')


def encode_rows(rows: Any) -> bytes:
    """The lines of *rows* (event rows, one write), as one bytes object.

    The last row, and every row followed by one of another transaction,
    carries the end mark.
    """
    n = len(rows)
    if n == 1:
        return encode_line(rows[0], True)
    return b"".join([encode_line(r, i == n - 1 or rows[i + 1][1] != r[1]) for i, r in enumerate(rows)])


def parse_line(line: bytes, lineno: int, expected: int, path: str) -> EventRow:
    """The event row on line *lineno* of *path* (without its line break), which must be event *expected*.

    The end mark, if the line has one, is not part of the row (see :func:`line_ends`).

    Raises:
        CorruptLogError: the line is not an event line, holds another seq,
            or fails its checksum -- naming the line and the seq.
    """
    m = _HEAD.match(line)
    if m is not None and line.endswith(_CLOSE_END):
        payload = line[m.end() : len(line) - len(_CLOSE_END)]
    elif m is not None and line.endswith(_CLOSE):
        payload = line[m.end() : len(line) - 1]
    else:
        raise _corrupt(path, lineno, expected, "is not a well-formed event line")
    seq, tx, ts, kind, target, checksum, b64 = m.groups()
    if int(seq) != expected:
        raise _corrupt(path, lineno, expected, f"holds seq {int(seq)} (a line is missing or out of place)")
    try:
        kind_name = kind[1:-1].decode() if b"\\" not in kind else orjson.loads(kind)
        if b64:
            payload = base64.b64decode(orjson.loads(payload), validate=True)
    except (ValueError, orjson.JSONDecodeError):
        raise _corrupt(path, lineno, expected, "is not a well-formed event line") from None
    row = EventRow(expected, int(tx), int(ts), kind_name, int(target), payload, int(checksum))
    if not row_intact(row):
        raise _corrupt(path, lineno, expected, "fails its checksum (the line was damaged or edited)")
    return row


def parse_lines(data: bytes, seq: int, lineno: int, path: str) -> tuple[list[EventRow], list[bool]]:
    """The event rows in *data* -- whole lines, each with its line break -- events *seq* on from line *lineno*
    of *path*, verified as :func:`parse_line` verifies; and whether each line carries the end mark.

    The replay's hot path: a line as memimg writes it is read in one match,
    without splitting *data* into lines first; any other line -- one with a
    kind with escapes, a base64 payload, or a fault -- is read (or named, in
    :class:`CorruptLogError`) by :func:`parse_line`.
    """
    rows: list[EventRow] = []
    ends: list[bool] = []
    match, checksum_of = _PLAIN_LINE.match, event_checksum
    pos, size = 0, len(data)
    while pos < size:
        m = match(data, pos)
        if m is not None:
            s, tx, ts, kind, target, checksum, payload = m.groups()
            end = payload.endswith(_END_MARK)
            if end:
                payload = payload[: -len(_END_MARK)]
            try:
                row = EventRow(seq, int(tx), int(ts), kind.decode(), int(target), payload, int(checksum))
                intact = int(s) == seq and checksum_of(*row[:6]) == row[6]
            except BAD_COLUMN:  # (a kind not UTF-8 too: a ValueError)
                intact = False
            if intact:
                rows.append(row)
                ends.append(end)
                seq += 1
                pos = m.end()
                continue
        stop = data.index(b"\n", pos)
        line = data[pos:stop]
        rows.append(parse_line(line, lineno + len(rows), seq, path))
        ends.append(line_ends(line))
        seq += 1
        pos = stop + 1
    return rows, ends


def line_ends(line: bytes) -> bool:
    """Whether *line* (without its line break) is the last of its transaction (carries the end mark)."""
    return line.endswith(END[:-1])


def _corrupt(path: str, lineno: int, seq: int, what: str) -> CorruptLogError:
    return CorruptLogError(
        f"{path!r} line {lineno} (event seq {seq}) {what}; restore the log from a backup",
        seq=seq,
        table="memimg_events",
        line=lineno,
    )


def snapshot_bytes(row: SnapshotRow) -> bytes:
    """A snapshot file's content: a JSON header line (seq, ts, checksum, size), then the payload as stored."""
    seq, ts, payload, checksum = row
    head = orjson.dumps({"seq": seq, "ts": ts, "checksum": checksum, "size": len(payload)})
    return head + b"\n" + bytes(payload)


def read_snapshot_file(path: str, seq: int) -> SnapshotRow:
    """The snapshot row in the file at *path* (named for *seq*).

    A file whose header does not parse gives a row whose checksum fails, so
    that recovery skips it as it skips any damaged snapshot.
    """
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"\n")
    try:
        head = orjson.loads(data[:end] if end >= 0 else data)
        return SnapshotRow(seq, int(head["ts"]), data[end + 1 :], int(head["checksum"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return SnapshotRow(seq, 0, data, -1)


def snapshot_header(path: str) -> tuple[int, int]:
    """``(ts, size)`` of the snapshot in the file at *path*, as its header states (``(0, -1)``: unreadable)."""
    with open(path, "rb") as f:
        line = f.readline(4096)
    try:
        head = orjson.loads(line)
        return int(head["ts"]), int(head["size"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return 0, -1


def write_atomically(path: str, chunks: Iterator[bytes] | list[bytes], *, sync: bool = True) -> None:
    """Write *path* whole or not at all: a temp file beside it, fsync, rename over it, fsync the directory.

    With ``sync=False`` the fsyncs are left out (a crash of the process
    still leaves the old file or the new one, never a mix).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.{os.getpid()}.{id(chunks):x}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        sync_directory(directory)


def sync_directory(directory: str) -> None:
    """fsync a directory, so that entries created or renamed in it survive a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
