"""memimg's tables in a SQL database, and the statements the SQLAlchemy store runs on them.

``{prefix}events`` (one row per event; on PostgreSQL also the ``commit_id``
of its commit, see :mod:`memimg.stores._postgres`), ``{prefix}snapshots``,
``{prefix}meta`` and ``{prefix}targets`` (the target index, primary key
``(target, seq)``: filled after the fact by :meth:`~memimg.Store.index_targets`,
never by a commit; see :mod:`memimg.stores._sqlitetargets` for why),
optionally in a schema of their own. The append rule is
in :attr:`LogTables.append_first`: the first row of a commit is inserted
only if the log's head -- the newest event, or, every event compacted away,
the newest snapshot's seq -- is the one the writer expected.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

from memimg.stores._protocol import TARGETS_KEY

__all__ = ["COLUMNS", "TARGET_COLUMNS", "LogTables"]

#: The columns of each table, as memimg makes them (``commit_id`` aside).
COLUMNS: Final = {
    "events": ["seq", "tx", "ts", "kind", "target", "payload", "checksum"],
    "snapshots": ["seq", "ts", "payload", "checksum"],
    "meta": ["key", "value"],
}
#: The columns of ``{prefix}targets``, the target index (made by a writable store if a log lacks it).
TARGET_COLUMNS: Final = ["target", "seq"]


class LogTables:
    """The tables of one log (*prefix* in *schema*) and the statements on them."""

    def __init__(self, schema: str | None, prefix: str, *, commit_id: bool) -> None:
        md = self.metadata = sa.MetaData(schema=schema)
        self.events = sa.Table(
            f"{prefix}events",
            md,
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("tx", sa.BigInteger, nullable=False),
            sa.Column("ts", sa.BigInteger, nullable=False),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("target", sa.BigInteger, nullable=False),
            sa.Column("payload", sa.LargeBinary, nullable=False),
            sa.Column("checksum", sa.BigInteger, nullable=False),
            *([sa.Column("commit_id", sa.BigInteger, nullable=True)] if commit_id else []),
        )
        self.snapshots = sa.Table(
            f"{prefix}snapshots",
            md,
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("ts", sa.BigInteger, nullable=False),
            sa.Column("payload", sa.LargeBinary, nullable=False),
            sa.Column("checksum", sa.BigInteger, nullable=False),
        )
        self.meta = sa.Table(
            f"{prefix}meta",
            md,
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        self.targets = sa.Table(
            f"{prefix}targets",
            md,
            sa.Column("target", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sqlite_with_rowid=False,
        )
        ev = self.events
        self._target_statements()
        # the last event, or (every event compacted away) the seq the newest snapshot covers
        head = sa.func.coalesce(
            sa.select(sa.func.max(ev.c.seq)).scalar_subquery(),
            sa.select(sa.func.max(self.snapshots.c.seq)).scalar_subquery(),
            0,
        )
        self.head = sa.select(head)
        names = COLUMNS["events"] + (["commit_id"] if commit_id else [])
        self.append_first = (
            ev.insert()
            .from_select(
                names,
                sa.select(*[sa.bindparam(n, type_=ev.c[n].type) for n in names]).where(
                    head == sa.bindparam("expected", type_=sa.BigInteger)
                ),
            )
            .execution_options(preserve_rowcount=True)
        )
        self.append_rest = ev.insert()
        self.read = (
            sa.select(*[ev.c[n] for n in COLUMNS["events"]])
            .where(ev.c.seq > sa.bindparam("after"))
            .order_by(ev.c.seq)
            .limit(sa.bindparam("n"))
        )

    def _target_statements(self) -> None:
        """The statements on the target index (see :meth:`memimg.Store.index_targets`)."""
        ev, t, meta = self.events, self.targets, self.meta
        columns = [ev.c[n] for n in COLUMNS["events"]]
        after, until = sa.bindparam("after", type_=sa.BigInteger), sa.bindparam("until", type_=sa.BigInteger)
        target = sa.bindparam("target", type_=sa.BigInteger)
        self.covered = sa.select(meta.c.value).where(meta.c.key == TARGETS_KEY)
        self.cover_none = meta.insert().values(key=TARGETS_KEY, value="0")
        self.last_event = sa.select(sa.func.coalesce(sa.func.max(ev.c.seq), 0))
        # an advance claims its range by moving the meta entry on from the value it read (one claim wins)
        self.claim = (
            meta.update()
            .where(meta.c.key == TARGETS_KEY, meta.c.value == sa.bindparam("done_text"))
            .values(value=sa.bindparam("upto_text"))
            .execution_options(preserve_rowcount=True)
        )
        unindexed = (ev.c.seq > sa.bindparam("done"), ev.c.seq <= sa.bindparam("upto"), ev.c.target != 0)
        news = sa.select(ev.c.target, ev.c.seq).where(*unindexed).order_by(ev.c.target, ev.c.seq)  # in key order
        self.fill = t.insert().from_select(["target", "seq"], news)
        self.read_indexed = (
            sa.select(*columns)
            .select_from(t.join(ev, ev.c.seq == t.c.seq))
            .where(t.c.target == target, t.c.seq > after, t.c.seq <= until)
            .order_by(t.c.seq)
            .limit(sa.bindparam("n"))
        )
        self.read_tail = (
            sa.select(*columns)
            .where(ev.c.seq > after, ev.c.seq <= until, ev.c.target == target)
            .order_by(ev.c.seq)
            .limit(sa.bindparam("n"))
        )
        compacted = sa.select(ev.c.target, ev.c.seq).where(
            ev.c.seq < sa.bindparam("before"), ev.c.seq <= sa.bindparam("done"), ev.c.target != 0
        )
        self.delete_entries = t.delete().where(sa.tuple_(t.c.target, t.c.seq).in_(compacted))

    def lease(self, key: str, value: str, now: str, holder: str) -> tuple[sa.Executable, sa.Executable]:
        """Renewing the lease row *key* if it is free or *holder*'s (see ``lease_entry``), and inserting it."""
        t = self.meta
        free_or_ours = sa.or_(t.c.value < now, sa.func.substr(t.c.value, 22) == holder)
        renew = t.update().where(t.c.key == key, free_or_ours).values(value=value)
        return renew.execution_options(preserve_rowcount=True), t.insert().values(key=key, value=value)

    def release(self, key: str, holder: str) -> sa.Executable:
        """Deleting the lease row *key* if it is *holder*'s."""
        t = self.meta
        return t.delete().where(t.c.key == key, sa.func.substr(t.c.value, 22) == holder)
