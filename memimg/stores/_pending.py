"""A ``memimg rekey``'s ``protection.pending`` meta entry: written, authenticated, and settled at the next open.

A rekey (:mod:`memimg.stores._rekeying`) records the settings it moves the
log to under :data:`PENDING_KEY` before it rewrites the rows, so that a
rekey killed at any point leaves the old options or the new ones valid:
:func:`settle_pending` (called by :func:`~memimg.stores._protected.protect`)
finds out from the rows where it got to, and finishes it when they were
rewritten.

The entry is meta text that anyone who can write the meta table can
write, so it carries two MACs (:func:`pending_entry`): one under the log's
old keys and one under the new ones (a side without keys has none), each
over the old side's key ids and log id and the new settings. The rekey holds
both sets of keys; a forger holds neither. An opener that holds the keys of
a side checks that side's MAC (:func:`untrusted`), and an entry that fails
it -- forged, edited, or written by a memimg from before these MACs --
finishes nothing and is blamed for nothing: the log opens with its current
settings (a warning names the entry) and ``memimg verify`` reports it
(:func:`pending_problem`). An opener without keys has nothing to check it
with and settles the entry on the rows' evidence alone.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Final

import orjson

from memimg._errors import CorruptLogError, MemimgError, ReadOnlyError
from memimg.core._protect import PROTECTION_KEY, Protection, ProtectionError, is_sealed, read_settings
from memimg.core._rows import row_intact, snapshot_checksum
from memimg.stores._protocol import SnapshotRow, Store

__all__ = [
    "PENDING_KEY",
    "entry_settings",
    "finish_rekey",
    "mismatch",
    "moved_by_rekey",
    "opens_under",
    "pending_entry",
    "pending_problem",
    "read_pending",
    "settle_pending",
    "untrusted",
]

#: The ``memimg_meta`` key of the settings a ``memimg rekey`` is moving the log to, while it runs.
PENDING_KEY: Final = "protection.pending"
_E: Final = b"E"
_S: Final = b"S"
#: The entry's MAC under the log's old keys, and under the new ones (fields of the entry).
_MACS: Final = ("old_mac", "new_mac")
#: How many of the newest events :func:`opens_under` looks through for an intact one.
_LOOK_BACK: Final = 8
#: A stored row as :meth:`Protection.unseal` takes it: ``(table, seq, tx, ts, kind, target, stored payload)``.
_Row = tuple[bytes, int, int, int, str, int, bytes]

log = logging.getLogger("memimg")


# -- the entry ----------------------------------------------------------------------------------------


def pending_entry(settings: dict[str, Any] | None, old: Protection, new: Protection) -> str:
    """The entry a rekey from the log's stored *settings* (opened with *old*) to *new* writes: *new*'s
    settings and their MAC under each side's keys (see the module docstring)."""
    to = new.settings()
    message = _message(settings, to)
    macs = {"old_mac": old.entry_mac(message) if _keyed(settings) else None, "new_mac": new.entry_mac(message)}
    return orjson.dumps({**to, **macs}, option=orjson.OPT_SORT_KEYS).decode()


def _message(settings: dict[str, Any] | None, pending: dict[str, Any]) -> bytes:
    """What an entry's MACs are over: the old side's key ids and log id (its compression may be changed by an
    open meanwhile), and the pending settings."""
    old = {name: (settings or {}).get(name) for name in ("key_id", "integrity_key_id", "log_id")}
    to = {name: value for name, value in pending.items() if name not in _MACS}
    return orjson.dumps({"from": old, "to": to}, option=orjson.OPT_SORT_KEYS)


def entry_settings(pending: dict[str, Any]) -> dict[str, Any]:
    """The settings an entry names, without its MACs: what the log's settings become when the rekey finishes."""
    return {name: value for name, value in pending.items() if name not in _MACS}


def _keyed(settings: dict[str, Any] | None) -> bool:
    """Whether stored *settings* name a key (an encryption or an integrity key)."""
    return bool(settings and (settings.get("key_id") or settings.get("integrity_key_id")))


def _holds(settings: dict[str, Any] | None, p: Protection) -> bool:
    """Whether *p* holds the keys of *settings* (with the integrity key alone: the integrity key)."""
    if p.macs_only:
        return (settings or {}).get("integrity_key_id") == p.integrity_id
    return mismatch("", settings, p) is None


def untrusted(settings: dict[str, Any] | None, pending: dict[str, Any], p: Protection) -> bool:
    """Whether *p* holds the keys of a side of the rekey *pending* in a log with stored *settings* and that
    side's MAC is missing or wrong: the entry was not written by the rekey (see the module docstring).
    Never for *p* without keys."""
    if not (p.key_id or p.integrity_id):
        return False
    for side, name in ((settings, "old_mac"), (entry_settings(pending), "new_mac")):
        if _keyed(side) and _holds(side, p):
            mac, expected = pending.get(name), p.entry_mac(_message(settings, pending))
            return not (
                isinstance(mac, str) and expected is not None and hmac.compare_digest(mac.encode(), expected.encode())
            )
    return False


def _untrusted_error(description: str, wrong: str | None) -> CorruptLogError:
    why = f"{wrong}, and the" if wrong is not None else f"{description!r}: the"
    return CorruptLogError(
        f"{why} {PENDING_KEY!r} entry of memimg_meta (the options a `memimg rekey` moves the log to) fails its "
        "MAC under the keys given: it was written or edited by someone without the log's keys, or by a memimg "
        "older than this one. It is not trusted: no rekey is finished or blamed by it. If a rekey run by an "
        "older memimg was interrupted, finish it as the security page of the docs says (run it again, or open "
        "the log with its new keys with that memimg); otherwise memimg_meta was tampered with: restore the log "
        "from a backup",
        seq=None,
        table="memimg_meta",
        tampered=True,
    )


def pending_problem(store: Store, p: Protection) -> CorruptLogError | None:
    """What ``memimg verify`` reports about *store*'s pending entry under *p*: the error when *p* does not
    trust it (see :func:`untrusted`), else None.

    Raises:
        CorruptLogError: the entry is damaged.
    """
    meta = store.meta()
    text = meta.get(PENDING_KEY)
    if text is None:
        return None
    settings, pending = read_settings(meta), read_pending(text)
    if entry_settings(pending) == settings or not untrusted(settings, pending, p):
        return None
    return _untrusted_error(store.description, None)


def read_pending(text: str) -> dict[str, Any]:
    """A rekey's pending entry from its stored *text* (its settings, and its MACs).

    Raises:
        CorruptLogError: the entry is damaged (it names the pending entry).
    """
    try:
        pending = read_settings({PROTECTION_KEY: text})
    except CorruptLogError:
        pending = None
    if pending is None:
        raise _damaged_pending()
    return pending


def _damaged_pending() -> CorruptLogError:
    return CorruptLogError(
        f"the {PENDING_KEY!r} entry of memimg_meta (the options a `memimg rekey` moves the log to) is damaged; "
        "restore it from a backup",
        seq=None,
        table="memimg_meta",
    )


def finish_rekey(store: Store, pending: dict[str, Any]) -> dict[str, Any] | None:
    """Make a rekey's *pending* settings the log's and drop the pending entry: its rewrite committed (the rows
    are under them). The log's settings now (None: a plain log)."""
    core = entry_settings(pending)
    settings = core if _any_option(core) else None
    try:
        text = None if settings is None else orjson.dumps(settings, option=orjson.OPT_SORT_KEYS).decode()
        store.set_meta(PROTECTION_KEY, text)
        store.set_meta(PENDING_KEY, None)
    except ReadOnlyError:
        pass
    return settings


def _any_option(settings: dict[str, Any]) -> bool:
    """Whether stored *settings* set anything (a rekey to a plain log records all of them unset as pending)."""
    return any(settings.get(name) for name in ("key_id", "integrity_key_id", "compression"))


def mismatch(description: str, settings: dict[str, Any] | None, p: Protection) -> str | None:
    """What about *p* does not fit the log's stored *settings* (None: it fits)."""
    stored_key = settings.get("key_id") if settings else None
    stored_ikey = settings.get("integrity_key_id") if settings else None
    if stored_key != p.key_id:
        if stored_key is None:
            return f"{description!r} is not encrypted, but an encryption_key was given"
        if p.key_id is None:
            return f"{description!r} is encrypted (key {stored_key}); give its encryption_key"
        return f"{description!r} is encrypted under key {stored_key}; the encryption_key given ({p.key_id}) is another"
    if stored_ikey != p.integrity_id:
        if stored_ikey is None:
            return f"{description!r} has no integrity chain, but an integrity_key was given"
        if p.integrity_id is None:
            return f"{description!r} has an integrity chain (key {stored_ikey}); give its integrity_key"
        return (
            f"{description!r} has an integrity chain under key {stored_ikey}; the integrity_key given "
            f"({p.integrity_id}) is another"
        )
    return None


# -- settling it ----------------------------------------------------------------------------------------


def settle_pending(
    store: Store, p: Protection, settings: dict[str, Any] | None, pending_text: str, wrong: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The settings the log's rows are under, and what about *p* does not fit them, with a rekey's
    ``protection.pending`` entry in the log (see :func:`~memimg.stores._protected.protect`): ``(settings, wrong)``.

    An entry that is the log's settings is a finished rekey's (killed
    between its two meta writes): dropped. An entry *p* does not trust (see
    :func:`untrusted`) settles nothing: with *p* holding the log's keys the
    log opens as its settings say (a warning names the entry). Otherwise
    the rows say where the rekey got to, and only rows that open (intact)
    count. With *p* holding the pending keys, the rekey is finished here
    (the pending settings become the log's, the entry is dropped) when the
    rows open under them and not under the old settings: a rekey binds the
    rows to a new log id, so with keys the two never both open them. A log
    without keys binds its rows to nothing and every row records its own
    compression, so a protection with compression reads any of its rows:
    its old settings are kept when they compress (they read the rows before
    and after the rewrite), and the pending ones taken over a plain log's (a
    plain log is not opened through a protection at all), unless they ask
    for zstd where zstandard is missing and no row shows the rewrite.
    Otherwise the entry stays (a rekey run again finishes it).

    Raises:
        ProtectionError: *p*'s keys are the rekey's but its rewrite did not
            commit (open with the old keys), or *p*'s keys are the old
            settings' and the rows show the rewrite committed (open with the
            new ones).
        CorruptLogError: the pending entry is damaged, or *p* holds only the
            rekey's keys and does not trust it (``tampered``); or *p* holds
            only the rekey's keys and the newest rows are damaged, so where
            the rekey got to cannot be told.
    """
    pending = read_pending(pending_text)
    if entry_settings(pending) == settings:  # a finished rekey's (killed between its two meta writes)
        finish_rekey(store, pending)
        return settings, wrong
    if untrusted(settings, pending, p):
        if wrong is not None:  # the keys given are not the log's: only this entry named them
            raise _untrusted_error(store.description, wrong)
        log.warning("%s (the log was opened with its current settings)", _untrusted_error(store.description, None))
        return settings, None
    if mismatch(store.description, pending, p) is not None:  # not the rekey's keys: the old ones, or wrong ones
        if wrong is None and moved_by_rekey(store, _reader(p, settings), settings, pending_text):
            if _keyed(pending):
                moved = f"to other keys (key {pending.get('key_id')}, integrity key {pending.get('integrity_key_id')})"
                then = "open it with those"
            else:
                moved, then = "to plain rows (no keys)", "open it without keys"
            raise ProtectionError(
                f"{store.description!r}: a `memimg rekey` finished moving the log {moved}; {then}. If no rekey "
                "was run on it, someone who can write its tables made it look so (with an earlier rekey's entry): "
                "restore the log from a backup"
            )
        return settings, wrong  # (rows that do not open under the old keys without that evidence: reported as read)
    new = _reader(p, pending, PENDING_KEY)
    if wrong is None:  # the old settings' keys too: a change of compression alone
        if not (p.encrypted or p.chained):
            if settings is None and (_usable(pending) or opens_under(store, _reader(p, None)) is False):
                return finish_rekey(store, pending), None
            return settings, None
        if opens_under(store, _reader(p, settings)) is False and opens_under(store, new) is True:
            return finish_rekey(store, pending), None
        return settings, None  # still the old rows, or damaged ones (the core reports them as it reads)
    state = opens_under(store, new)
    if state is True and _keyed(settings) and not _keyed(pending) and _oldest_fails(store, new):
        state = False  # a move to plain rows rewrote every row: a plain newest row alone is not one
    if state is True:
        return finish_rekey(store, pending), None
    if state is None:
        raise CorruptLogError(
            f"{wrong}, and a `memimg rekey` to the keys given is pending (running, or cut short); the log's "
            "newest rows are damaged (checksum mismatch), so whether its rewrite committed cannot be told: "
            "nothing was changed. Open it with its old keys to read what is intact, or restore the log from a "
            "backup",
            seq=None,
            table="memimg_events",
        )
    raise ProtectionError(
        f"{wrong}: a `memimg rekey` to the keys given started and did not finish, so the log is still "
        "under its old keys; open it with them (or run the rekey again)"
    )


def _reader(p: Protection, settings: dict[str, Any] | None, entry: str = PROTECTION_KEY) -> Protection:
    """What opens rows stored under *settings* (None: a plain log's) with *p*'s keys; it seals nothing.

    Every row records its own compression: the setting only tells whether
    a protection without keys is active (reads compressed rows), so zlib
    stands for any -- a zstd setting needs no zstandard to check rows with.

    Raises:
        CorruptLogError: the log id of *settings* is damaged (naming the meta *entry* they come from).
    """
    q = p.compressing("zlib" if settings and settings.get("compression") else None)
    try:
        return q.for_log(settings.get("log_id") if settings else None)
    except CorruptLogError:
        if entry == PROTECTION_KEY:
            raise
        raise _damaged_pending() from None


def _usable(settings: dict[str, Any]) -> bool:
    """Whether the compression *settings* ask for is installed (zstd needs zstandard)."""
    try:
        Protection().compressing(settings.get("compression"))
    except ProtectionError:
        return False
    return True


def moved_by_rekey(
    store: Store, p: Protection, settings: dict[str, Any] | None, pending_text: str, row: _Row | None = None
) -> bool:
    """Whether the rows of *store* (its stored *settings*) show that the rekey pending in it (*pending_text*)
    moved them from under *p*: positive evidence, so that a pending entry (left over, or forged) never turns
    damage into a rekey. Never for an entry *p* does not trust (see :func:`untrusted`).

    A rekey rewrites every row in one transaction: the newest rows no
    longer open under *p*, and they -- or the failing *row*, when given --
    open under the pending settings when they can be built (*p* holds the
    pending keys, or the pending settings have none); else (keys *p* does
    not hold) the oldest stored event does not open under *p* either.
    """
    try:
        pending = read_pending(pending_text)
        if untrusted(settings, pending, p) or opens_under(store, p) is not False:
            return False
        if mismatch("", pending, p) is None:
            reader: Protection | None = _reader(p, pending, PENDING_KEY)
        elif not _keyed(pending):
            reader = _reader(Protection(), pending, PENDING_KEY)
        else:
            reader = None
        if reader is None:
            return _oldest_fails(store, p)
        if row is not None:
            try:
                reader.unseal(*row)
            except CorruptLogError:
                return False
            return True
        return opens_under(store, reader) is True
    except MemimgError:
        return False


def _oldest_fails(store: Store, p: Protection) -> bool:
    """Whether the oldest stored event is intact and does not open under *p* (True when no event is stored)."""
    for seq, tx, ts, kind, target, stored, checksum in store.read(store.first_seq() - 1, 1):
        if not row_intact((seq, tx, ts, kind, target, stored, checksum)):
            return False
        try:
            p.unseal(_E, seq, tx, ts, kind, target, bytes(stored))
        except CorruptLogError:
            return True
        return False
    return True


def opens_under(store: Store, p: Protection) -> bool | None:
    """Whether the newest intact event and the newest snapshot (the highest seq) of *store* open under *p* (a
    rekey's rows do); under a protection with nothing set, only plain rows do (it would decompress a
    compressed row, which a rekey to compression alone writes). A damaged row (its CRC-32 fails) is not
    checked: the newest event is, else the newest intact one of the few before it (a rekey rewrites every
    row); None when no intact row was checked (undecided: the core reports the damage when it reads). An
    empty log's rows all open (True).

    Raises:
        ProtectionError: a row needs what is not installed (zstandard): not a question of keys.
    """
    try:
        head, first = store.head(), store.first_seq()
        events = [row for row in store.read(max(first - 1, head - _LOOK_BACK)) if row_intact(row)][-1:]
        snaps = [SnapshotRow(*store.read_snapshot(info.seq)) for info in sorted(store.snapshots())[-1:]]
        if head < first and not snaps:
            return True
        checked = False
        for seq, tx, ts, kind, target, stored, _ in events:
            if is_sealed(stored) and not p.active:
                return False
            p.unseal(_E, seq, tx, ts, kind, target, bytes(stored))
            checked = True
        for seq, ts, stored, checksum in snaps:
            if snapshot_checksum(seq, ts, bytes(stored)) == checksum:
                if is_sealed(stored) and not p.active:
                    return False
                p.unseal(_S, seq, 0, ts, "", 0, bytes(stored))
                checked = True
    except CorruptLogError:
        return False
    return True if checked else None
