"""What a failure of a database reached through SQLAlchemy raises: a :class:`StoreError`, told apart by the
driver's error class and SQLSTATE, never by its message (:class:`LockedError` for lock timeouts,
serialization failures and deadlocks)."""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import exc as sa_exc

from memimg._errors import LockedError, StoreError
from memimg.stores._postgres import lost, sqlstate
from memimg.stores._sqlitewal import is_busy

__all__ = ["store_error"]

# SQLSTATEs: lock_not_available, serialization_failure, deadlock_detected
_LOCKED: Final = frozenset({"55P03", "40001", "40P01"})
_ADVICE: Final = {
    "53100": "the database server's disk is full: free space, then retry",
    "53200": "the database server is out of memory",
    "53300": "the database server has too many connections: raise max_connections or use fewer",
    "57014": "the statement was cancelled (statement_timeout?)",
    "25006": "the database is read-only (a standby?): connect to the primary",
    "42501": "the database user lacks a privilege on memimg's tables or schema",
}


def store_error(
    err: BaseException, doing: str, description: str, *, write: bool, sqlite: bool, pg: bool, operational: Any
) -> StoreError:
    """The :class:`StoreError` for a failure of the database or its driver (by class and SQLSTATE)."""
    orig: BaseException = err.orig if isinstance(err, sa_exc.DBAPIError) and err.orig is not None else err
    text = str(orig).strip() or type(orig).__name__
    outcome = "; nothing was written" if write else ""
    state = sqlstate(orig)
    if state in _LOCKED or (sqlite and is_busy(orig)):
        return LockedError(
            f"{doing} in {description}: the database stayed locked by another writer ({text}){outcome}; retry",
            store=description,
            operation=doing,
        )
    if state is not None and state in _ADVICE:
        advice = _ADVICE[state]
    elif pg and lost(err, operational):
        advice = "the database cannot be reached; memimg reconnects once it is back"
    else:
        advice = "see the cause below"
    return StoreError(
        f"{doing} in {description} failed ({text}){outcome}; {advice}",
        store=description,
        operation=doing,
    )
