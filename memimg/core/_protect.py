"""Protection at rest: what a row's payload becomes on its way to the store, and back.

One transform, applied to every stored payload -- event payloads and
snapshot bodies alike -- where the rows meet the store (see
``memimg/stores/_protected.py``), so every store gets it through the same
path. Three independent options:

* **compression** (``"zstd"`` or ``"zlib"``): snapshots always, event
  payloads over :data:`COMPRESS_OVER` bytes, each kept only when it is
  smaller;
* **encryption** (AES-256-GCM, the ``cryptography`` package): a fresh
  96-bit nonce per row; the log's id (see :meth:`Protection.for_log`), the
  row's plain columns -- table, seq, tx, time, kind, target -- and the
  sealed header are the associated data, so a sealed payload moved to
  another row, table or log no longer opens;
* **integrity** (HMAC-SHA256 with a key of its own): each row carries the
  MAC of the row before it in the chain and its own MAC over its columns,
  that previous MAC and its stored body (encrypt-then-MAC: the chain is
  checked without the encryption key).

A sealed payload (a plain one is JSON, so it never starts with a zero
byte)::

    0x00 | flags | [prev MAC (32) | MAC (32)] | body
    body = nonce (12) | AES-GCM(data) + tag (16)   if encrypted, else data
    data = zstd/zlib(payload)                      if compressed, else payload

The chain: event *n*'s previous MAC is event *n - 1*'s MAC (for the first
event, :meth:`Protection.start`); a snapshot at seq *s* carries event *s*'s
MAC as its link, so the chain can be followed from a snapshot when
compaction dropped the events before it. What stays visible in the store:
the plain columns (seq, tx, time, kind -- memimg's own event kind names
such as ``obj.set``, never a class name --, target object id) and each
payload's size. Type names, field names, values and transaction metadata
are inside the sealed body.

Keys are never kept as attributes that a ``repr``, a traceback's locals or
an error message would show: :class:`Protection` keeps them inside the
cipher and HMAC objects only, and names a key by its fingerprint (an HMAC of
a fixed label under the key: it identifies the key without revealing it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, final

import orjson

from memimg._errors import CorruptLogError, ProtectionError
from memimg.core._nonces import NONCE_LAST, renew_nonces
from memimg.core._nonces import nonces as _nonce
from memimg.core._rows import KIND_CODES

__all__ = [
    "COMPRESSIONS",
    "COMPRESS_OVER",
    "MAC_SIZE",
    "PROTECTION_KEY",
    "Protection",
    "ProtectionError",
    "is_sealed",
    "new_log_id",
    "parse_key",
    "renew_nonces",
]

#: Event payloads larger than this many bytes are compressed (when a compression is set); snapshots always are.
COMPRESS_OVER: Final = 256
#: The compressions a log may use.
COMPRESSIONS: Final = ("zstd", "zlib")
#: The ``memimg_meta`` key holding a protected log's settings (never a key: names and fingerprints).
PROTECTION_KEY: Final = "protection"
MAC_SIZE: Final = 32

_MAGIC: Final = 0
_ZLIB: Final = 1
_ZSTD: Final = 2
_AES: Final = 4
_MAC: Final = 8
_NONCE_SIZE: Final = 12
#: a nonce: its prefix (8 bytes) and its counter (see memimg.core._nonces)
_NONCE: Final = struct.Struct("<8sI")
_HEADER: Final = struct.Struct("<qqqq")
_EVENT: Final = b"E"
_SNAPSHOT: Final = b"S"
#: a snapshot's checksum is an event's with kind code 0 (see memimg.core._rows.snapshot_checksum)
_NO_CODES: Final[dict[str, int]] = {"": 0}
#: a sealing loop: ``seal(rows, prev) -> (sealed rows, last MAC)`` (see :func:`_sealer`)
_Seal = Callable[[Iterable[Sequence[Any]], bytes], tuple[list[Any], bytes]]
#: flags -> the flags byte (in the associated data) and the stored header ``0x00 | flags``
_FLAGS: Final = tuple(bytes((flags,)) for flags in range(16))
_HEADS: Final = tuple(bytes((_MAGIC, flags)) for flags in range(16))


def parse_key(value: object, what: str) -> bytes:
    """The 32 bytes of a key given as bytes, as 64 hex digits or as base64 text.

    Raises:
        ProtectionError: *value* is not such a key (the message says what it
            is -- its type and length -- never the value).
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        key = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        key = b""
        if len(text) == 64:
            try:
                key = bytes.fromhex(text)
            except ValueError:
                key = b""
        if not key:
            try:
                key = base64.b64decode(text, validate=True)
            except (ValueError, binascii.Error):
                key = b""
    else:
        raise ProtectionError(f"{what} must be 32 bytes, or their hex or base64 text, not a {type(value).__name__}")
    if len(key) != 32:
        raise ProtectionError(
            f"{what} must be 32 bytes (256 bits), or their hex (64 digits) or base64 text; the value given "
            f"({type(value).__name__} of length {len(value)}) is not. Make one with: "
            "python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return key


def new_log_id() -> str:
    """A fresh random log id (32 hex digits): see :meth:`Protection.for_log`."""
    return os.urandom(16).hex()


def fingerprint(key: bytes, label: bytes) -> str:
    """A key's public name: 16 hex digits of an HMAC of *label* under it."""
    return hmac.digest(key, b"memimg key id " + label, "sha256")[:8].hex()


def is_sealed(payload: bytes) -> bool:
    """Whether a stored payload went through :class:`Protection` (a plain one is JSON, or empty)."""
    return len(payload) > 1 and payload[0] == _MAGIC


_local = threading.local()


def _aesgcm() -> Any:
    """The AESGCM class, or None when ``cryptography`` is not installed."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return None
    return AESGCM


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as err:
        raise ProtectionError(
            f"zstd compression (compression='zstd', or a log's zstd-compressed rows) needs the zstandard "
            f"package: pip install 'memimg[zstd]' ({err})"
        ) from err
    return zstandard


def _compress(data: bytes, how: str) -> bytes:
    if how == "zlib":
        return zlib.compress(data, 6)
    compressor = getattr(_local, "zc", None)
    if compressor is None:  # a ZstdCompressor is not thread-safe: one per thread
        compressor = _local.zc = _zstd().ZstdCompressor(level=3)
    return compressor.compress(data)  # type: ignore[no-any-return]


def _decompress(data: bytes, flags: int) -> bytes:
    if flags & _ZLIB:
        return zlib.decompress(data)
    decompressor = getattr(_local, "zd", None)
    if decompressor is None:
        decompressor = _local.zd = _zstd().ZstdDecompressor()
    return decompressor.decompress(data)  # type: ignore[no-any-return]


@final
class Protection:
    """How a log's payloads are sealed: an optional cipher, MAC chain and compression.

    Args:
        encryption_key: 32 bytes (or hex/base64 text) for AES-256-GCM, or None.
        integrity_key: 32 bytes (or hex/base64 text) for the HMAC-SHA256 chain, or None.
        compression: ``"zstd"``, ``"zlib"`` or None.

    Raises:
        ProtectionError: a key is malformed, or encryption is asked for and
            the ``cryptography`` package is missing.
        ValueError: *compression* is not one of :data:`COMPRESSIONS`.
    """

    __slots__ = (
        "_aead",
        "_entry_mac",
        "_log_tag",
        "_mac_key",
        "_seal_snapshots",
        "compression",
        "integrity_id",
        "key_id",
        "log_id",
        "macs_only",
        "seal_rows",
    )

    def __init__(
        self, *, encryption_key: object = None, integrity_key: object = None, compression: str | None = None
    ) -> None:
        if compression is not None and compression not in COMPRESSIONS:
            raise ValueError(
                f"compression must be one of {', '.join(map(repr, COMPRESSIONS))} or None, not {compression!r}"
            )
        if compression == "zstd":
            _zstd()
        self.compression = compression
        self.macs_only = False
        #: the log this protection is bound to (see :meth:`for_log`); None: none (a log made before ids)
        self.log_id: str | None = None
        self._log_tag = b""
        self._aead: Any = None
        self.key_id: str | None = None
        key = ikey = None
        if encryption_key is not None:
            AESGCM = _aesgcm()
            if AESGCM is None:  # raised outside an except block: no ImportError context whose frames hold a key
                raise ProtectionError("encryption needs the cryptography package: pip install 'memimg[crypto]'")
            key = parse_key(encryption_key, "encryption_key")
        if integrity_key is not None:
            ikey = parse_key(integrity_key, "integrity_key")
        if key is not None and ikey is not None and hmac.compare_digest(key, ikey):
            raise ProtectionError(
                "encryption_key and integrity_key are the same key: give two different keys (one key used "
                "for both AES-GCM and HMAC weakens both); make one with "
                "python -c 'import secrets; print(secrets.token_hex(32))'"
            )
        if key is not None:
            self._aead = AESGCM(key)
            self.key_id = fingerprint(key, b"encryption")
        # the HMAC key lives in a closure: no attribute, no local of a frame that outlives this call, holds it
        self._mac_key: Any = None
        self.integrity_id: str | None = None
        if ikey is not None:
            self.integrity_id = fingerprint(ikey, b"integrity")
            self._mac_key = _mac_function(ikey)
        # the MAC of meta entries (a rekey's pending one): a key of its own, derived from the integrity key
        # if any, else from the encryption key (see entry_mac)
        base = ikey if ikey is not None else key
        self._entry_mac: Any = None if base is None else _mac_function(_derive_key(base, b"meta entry"))
        self._bind()

    def _bind(self) -> None:
        """Make the sealing loops of these settings (see :func:`_sealer`): once per protection, not per call."""
        #: ``seal_rows(rows, prev) -> (sealed rows, last MAC)``: :meth:`seal_events` for events (a commit's call)
        self.seal_rows: _Seal
        self._seal_snapshots: _Seal
        if self.macs_only:
            self.seal_rows = self._seal_snapshots = _refuse_sealing
            return
        self.seal_rows = _sealer(self._aead, self._mac_key, self.compression, self._log_tag, _EVENT)
        self._seal_snapshots = _sealer(self._aead, self._mac_key, self.compression, self._log_tag, _SNAPSHOT)

    def __repr__(self) -> str:
        return (
            f"Protection(encryption={'aes-256-gcm key ' + self.key_id if self.key_id else None!r}, "
            f"integrity={'hmac-sha256 key ' + self.integrity_id if self.integrity_id else None!r}, "
            f"compression={self.compression!r})"
        )

    def compressing(self, compression: str | None) -> Protection:
        """This protection (the same keys) with another compression."""
        if compression is not None and compression not in COMPRESSIONS:
            raise ProtectionError(f"the log's stored compression {compression!r} is unknown to this memimg")
        if compression == "zstd":
            _zstd()
        return self._derive(compression, self.log_id, self._log_tag, self.macs_only)

    def for_log(self, log_id: str | None) -> Protection:
        """This protection bound to the log *log_id* (32 hex digits; None: a log made before log ids).

        The id is part of every row's associated data and MAC and of the
        chain's start: a row, a snapshot or a whole log sealed for one log
        does not open in another under the same keys.

        Raises:
            CorruptLogError: *log_id* is not 32 hex digits (the stored settings were edited).
        """
        if log_id is None:
            return self._derive(self.compression, None, b"", self.macs_only)
        try:
            raw = bytes.fromhex(log_id) if isinstance(log_id, str) and len(log_id) == 32 else b""
        except ValueError:
            raw = b""
        if not raw:
            raise CorruptLogError(
                f"the log id in the {PROTECTION_KEY!r} entry of memimg_meta is damaged; restore it from a backup",
                seq=None,
                table="memimg_meta",
            )
        return self._derive(self.compression, log_id, b"memimg log " + raw, self.macs_only)

    def checking_macs_only(self) -> Protection:
        """This protection (its integrity key) made to check rows' MACs and the chain without decrypting them.

        What ``memimg verify`` uses with the integrity key alone on an
        encrypted log: :meth:`unseal` returns an encrypted row's stored body
        (ciphertext) as its payload, and never seals.
        """
        if not self.chained:
            raise ProtectionError("checking MACs only needs an integrity key")
        return self._derive(None, self.log_id, self._log_tag, True)

    def _derive(self, compression: str | None, log_id: str | None, log_tag: bytes, macs_only: bool) -> Protection:
        """A protection with these keys and the given settings, its sealing loops made once (:meth:`_bind`)."""
        other = object.__new__(Protection)
        other._aead, other._mac_key, other._entry_mac, other.key_id, other.integrity_id = (
            self._aead,
            self._mac_key,
            self._entry_mac,
            self.key_id,
            self.integrity_id,
        )
        other.compression, other.log_id, other._log_tag, other.macs_only = compression, log_id, log_tag, macs_only
        other._bind()
        return other

    def __reduce__(self) -> Any:
        raise TypeError("a Protection holds keys: it is not pickled")

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    @property
    def chained(self) -> bool:
        return self._mac_key is not None

    @property
    def active(self) -> bool:
        """Whether sealing changes anything (some option is set)."""
        return self._aead is not None or self._mac_key is not None or self.compression is not None

    def settings(self) -> dict[str, Any]:
        """What is stored in ``memimg_meta`` (:data:`PROTECTION_KEY`): names and fingerprints, no key."""
        return {
            "version": 1,
            "cipher": "aes-256-gcm" if self._aead is not None else None,
            "key_id": self.key_id,
            "integrity": "hmac-sha256" if self._mac_key is not None else None,
            "integrity_key_id": self.integrity_id,
            "compression": self.compression,
            "log_id": self.log_id,
        }

    def settings_text(self) -> str:
        return orjson.dumps(self.settings(), option=orjson.OPT_SORT_KEYS).decode()

    def entry_mac(self, message: bytes) -> str | None:
        """The MAC (hex) of a ``memimg_meta`` entry's *message* under these keys; None without a key.

        HMAC-SHA256 under a key derived for this purpose alone from the
        integrity key when there is one, else from the encryption key: the
        integrity key alone (``memimg verify`` with it) checks what a
        protection with both keys wrote.
        """
        return None if self._entry_mac is None else self._entry_mac(b"memimg meta entry\0", message).hex()

    # -- the chain ----------------------------------------------------------------------------

    def start(self, seq: int) -> bytes:
        """The previous MAC of an event *seq* + 1 when neither event *seq* nor a snapshot at *seq* is stored."""
        return self._mac_key(  # type: ignore[no-any-return]
            b"memimg chain start" + self._log_tag + _HEADER.pack(seq, 0, 0, 0)
        )

    # -- sealing --------------------------------------------------------------------------------

    def seal(
        self, table: bytes, seq: int, tx: int, ts: int, kind: str, target: int, payload: bytes, prev: bytes
    ) -> tuple[bytes, bytes]:
        """``(stored payload, its MAC)`` of a row (*table*: ``b"E"`` or ``b"S"``; *prev*: the chain's previous MAC).

        The MAC is ``b""`` when there is no integrity key.
        """
        rows, mac = self.seal_events(((seq, tx, ts, kind, target, payload, 0),), prev, table)
        return rows[0][5], mac

    def seal_events(self, rows: Iterable[Sequence[Any]], prev: bytes, table: bytes = _EVENT) -> tuple[list[Any], bytes]:
        """Event *rows* (seven columns each; the checksum is not read) sealed in order, each chained from the
        one before and the first from *prev*; and the last MAC (``b""`` without an integrity key).

        Each sealed row is a tuple of the seven columns, its checksum that of
        the stored payload (:func:`~memimg.core._rows.event_checksum`): the
        one CRC-32 a sealed row gets. (*table* ``b"S"``: snapshot rows, as
        :meth:`seal_snapshot` gives them.) :attr:`seal_rows` is this call
        for events, without the dispatch on *table* (what a commit calls).
        """
        if table == _EVENT:
            return self.seal_rows(rows, prev)
        if table == _SNAPSHOT:
            return self._seal_snapshots(rows, prev)
        raise ValueError(f"table must be b'E' (events) or b'S' (snapshots), not {table!r}")

    def seal_snapshot(self, seq: int, ts: int, payload: bytes, link: bytes) -> tuple[bytes, int]:
        """``(stored payload, its checksum)`` of a snapshot at *seq* whose chain *link* is event *seq*'s MAC."""
        row = self._seal_snapshots(((seq, 0, ts, "", 0, payload, 0),), link)[0][0]
        return row[5], row[6]

    def unseal(
        self, table: bytes, seq: int, tx: int, ts: int, kind: str, target: int, stored: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """``(payload, prev MAC, MAC)`` of a stored row, its own MAC and ciphertext checked.

        The caller checks that *prev* is the MAC before it in the chain.

        Raises:
            CorruptLogError: the row is plain or sealed otherwise than this
                protection seals, its MAC or its ciphertext does not check
                out (edited, moved, or sealed under another key), or its
                data does not decompress.
            ProtectionError: the row is zstd-compressed and zstandard is not installed.
        """
        where = "event" if table == _EVENT else "snapshot at"
        name = "memimg_events" if table == _EVENT else "memimg_snapshots"
        if not is_sealed(stored):
            if self._aead is not None or self._mac_key is not None:
                raise CorruptLogError(
                    f"{where} seq {seq} is not sealed (neither encrypted nor MAC'd) in a protected log: a row was "
                    "inserted or replaced by someone without the key; restore the log from a backup",
                    seq=seq,
                    table=name,
                    tampered=self._mac_key is not None,
                )
            return stored, b"", b""
        flags = stored[1]
        columns = self._log_tag + table + _HEADER.pack(seq, tx, ts, target) + kind.encode()
        at = 2
        prev = mac = b""
        if flags & _MAC:
            if self._mac_key is None:
                raise CorruptLogError(
                    f"{where} seq {seq} carries an integrity MAC but no integrity key was given; open the log with "
                    "its integrity_key",
                    seq=seq,
                    table=name,
                    tampered=True,
                )
            prev = stored[2 : 2 + MAC_SIZE]
            mac = stored[2 + MAC_SIZE : 2 + 2 * MAC_SIZE]
            at = 2 + 2 * MAC_SIZE
            if len(mac) != MAC_SIZE or not hmac.compare_digest(
                mac, self._mac_key(columns + stored[:2] + prev, memoryview(stored)[at:])
            ):
                raise CorruptLogError(
                    f"{where} seq {seq} fails its integrity MAC: the row was edited, moved, or written without "
                    "the integrity key (or the key is not this log's); restore the log from a backup",
                    seq=seq,
                    table=name,
                    tampered=True,
                )
        elif self._mac_key is not None:
            raise CorruptLogError(
                f"{where} seq {seq} carries no integrity MAC in a log with an integrity chain: the row was "
                "inserted or replaced without the key; restore the log from a backup",
                seq=seq,
                table=name,
                tampered=True,
            )
        data = stored[at:]
        if self.macs_only:
            return bytes(data), prev, mac  # the MAC is over the stored bytes: checked; the contents are not opened
        if flags & _AES:
            if self._aead is None:
                raise CorruptLogError(
                    f"{where} seq {seq} is encrypted but no encryption key was given", seq=seq, table=name
                )
            from cryptography.exceptions import InvalidTag

            try:
                data = self._aead.decrypt(data[:_NONCE_SIZE], data[_NONCE_SIZE:], columns + bytes((flags & ~_MAC,)))
            except (InvalidTag, ValueError):
                raise CorruptLogError(
                    f"{where} seq {seq} does not decrypt: it was edited or moved, or sealed under another key; "
                    "restore the log from a backup",
                    seq=seq,
                    table=name,
                ) from None
        elif self._aead is not None:
            raise CorruptLogError(
                f"{where} seq {seq} is not encrypted in an encrypted log: the row was inserted or replaced by "
                "someone without the key; restore the log from a backup",
                seq=seq,
                table=name,
            )
        if flags & (_ZLIB | _ZSTD):
            try:
                data = _decompress(data, flags)
            except ProtectionError:
                raise  # zstandard is not installed: not damage (the error says what to install)
            except Exception as err:
                raise CorruptLogError(
                    f"{where} seq {seq} does not decompress ({type(err).__name__}); restore the log from a backup",
                    seq=seq,
                    table=name,
                ) from None
        return bytes(data), prev, mac


def _refuse_sealing(rows: Iterable[Sequence[Any]], prev: bytes) -> tuple[list[Any], bytes]:
    raise ProtectionError("a protection that checks MACs only does not seal rows")


def _sealer(aead: Any, mac_of: Any, compression: str | None, log_tag: bytes, table: bytes) -> _Seal:
    """The one sealing loop (the format: see the module docstring), bound to one protection's settings and table.

    ``seal(rows, prev) -> (sealed rows, last MAC)``: see
    :meth:`Protection.seal_events`. A single-mutation commit's hot path,
    measured (``python -m benchmarks --only protection``): everything that
    does not change from call to call -- the cipher's method, the MAC
    function, the compression, the associated data's prefix, each kind's
    bytes, checksum code and associated-data tail -- is settled here, once per
    protection; a call checks the pid its nonces were drawn in (one
    ``getpid``) and each row costs its header packed once (for its
    associated data, its MAC and its checksum), a nonce and one AES-GCM call.
    """
    encrypt = None if aead is None else aead.encrypt
    over = COMPRESS_OVER if table == _EVENT else -1  # snapshots: always
    prefix = log_tag + table
    compressed = _ZLIB if compression == "zlib" else _ZSTD
    # kind -> (its bytes, its checksum code, the associated data's tail of an uncompressed encrypted row)
    base = _AES if encrypt is not None else 0  # the flags of a row left uncompressed
    # kind -> (its bytes, its checksum code, its associated data's tail when uncompressed: name and flags byte)
    kinds = {
        name: (name.encode(), code, name.encode() + _FLAGS[base])
        for name, code in (KIND_CODES if table == _EVENT else _NO_CODES).items()
    }
    pack, crc, nonces, getpid, flag_bytes, heads = _HEADER.pack, zlib.crc32, _nonce, os.getpid, _FLAGS, _HEADS
    pack_nonce = _NONCE.pack

    def seal(rows: Iterable[Sequence[Any]], prev: bytes) -> tuple[list[Any], bytes]:
        if encrypt is not None:
            prefix8, counter, pid = nonces._state  # nonces.current(), its check inline (once per call)
            if pid != getpid():
                prefix8, counter, _ = nonces.current()
        out: list[Any] = []
        for seq, tx, ts, kind, target, payload, _ in rows:
            if type(payload) is not bytes:
                payload = bytes(payload)
            header = pack(seq, tx, ts, target)
            known = kinds.get(kind)
            if known is None:  # not memimg's own kind (a damaged or crafted row being re-sealed): not cached
                spelled = kind.encode()
                known = (spelled, crc(spelled), spelled + flag_bytes[base])
            name, code, tail = known
            data, flags = payload, base
            if compression is not None and len(payload) > over:
                packed = _compress(payload, compression)
                if len(packed) < len(payload):
                    data, flags = packed, base | compressed
                    tail = name + flag_bytes[flags]
            if encrypt is not None:
                n = next(counter)  # Nonces.__call__, inline (a frame less per row)
                nonce = pack_nonce(prefix8, n) if n < NONCE_LAST else nonces()
                data = nonce + encrypt(nonce, data, prefix + header + tail)
            if mac_of is not None:
                head = heads[flags | _MAC]
                mac = mac_of(prefix + header + name + head + prev, data)
                stored = head + prev + mac + data
                prev = mac
            elif flags:
                stored = heads[flags] + data
            else:
                stored = payload
            out.append((seq, tx, ts, kind, target, stored, crc(stored, crc(header, code))))
        return out, (prev if mac_of is not None else b"")

    return seal


def _derive_key(key: bytes, purpose: bytes) -> bytes:
    """A key for *purpose* alone, derived from *key* (HMAC-SHA256 of a label under it)."""
    return hmac.digest(key, b"memimg derived key " + purpose, "sha256")


def _mac_function(key: bytes) -> Any:
    """``mac(*parts) -> bytes``: HMAC-SHA256 under *key* of the parts' concatenation (the key in the closure only)."""
    template = hmac.new(key, digestmod=hashlib.sha256)

    def mac(*parts: bytes | memoryview) -> bytes:
        h = template.copy()
        for part in parts:
            h.update(part)
        return h.digest()

    return mac


def read_settings(meta: dict[str, str]) -> dict[str, Any] | None:
    """The protection settings a store's meta records (None: a plain log)."""
    text = meta.get(PROTECTION_KEY)
    if text is None:
        return None
    try:
        settings = orjson.loads(text)
    except orjson.JSONDecodeError:
        settings = None
    if not isinstance(settings, dict):
        raise CorruptLogError(
            f"the {PROTECTION_KEY!r} entry of memimg_meta is damaged; restore it from a backup",
            seq=None,
            table="memimg_meta",
        )
    return settings
