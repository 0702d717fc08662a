"""The compiled accelerator and the pure-Python code give the same results, step by step.

memimg.model._accel picks the compiled fast paths (memimg/model/_speedups.c)
or the pure-Python code once, at import; ``MEMIMG_PURE_PYTHON=1`` forces the
latter. Each path runs in a child process of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("MEMIMG_PURE_PYTHON", "MEMIMG_REQUIRE_ACCEL")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, *args], env={**base, **env}, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


def _scenario(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    done = _run(env, "-m", "tests.model.accel_scenario", str(tmp_path / f"image-{len(env)}.db"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_compiled_path_and_the_pure_path_see_the_same(tmp_path: Path) -> None:
    """Reads with another thread's transaction open, inside a transaction, while a commit is published,
    counters, fast-path and slow-path sets, discards, errors, the hooks' removal and replay: the same on
    both paths, and what the transaction rules say."""
    compiled = _scenario(tmp_path, {})
    pure = _scenario(tmp_path, {"MEMIMG_PURE_PYTHON": "1"})
    assert pure["compiled"] is False
    if os.environ.get("MEMIMG_REQUIRE_ACCEL"):  # CI: the extension must be there, and used
        assert compiled["compiled"] is True
    assert compiled["seen"] == pure["seen"]
    seen = pure["seen"]
    assert seen["other_tx"] == [True, 1, "one", 2, 3, 0, "value", "value"]
    assert seen["inside"] == [10, "ten", "dix é", 2.5, 4]
    assert seen["inside_other_thread"] == ["theirs", "one", 2, 3, 0]
    assert seen["after"] == [10, "ten", "dix é", 2.5, 4]
    assert seen["discarded"] == [10, "ten", None]
    assert seen["publishing"] in ([[10, None]], [[20, 21]])
    assert seen["errors"] == ["AttributeError", "AttributeError"]
    assert seen["hooks_after_idle"] == [False, "member_descriptor", 30]
    assert seen["replayed"] == [True, 30, "ten", 21]


_CLOSED_IMAGE = """
import gc, sys, threading, weakref
import memimg
from tests.models import Account
img = memimg.open(sys.argv[1], root=dict)
img.root["a"] = Account(owner="ann", balance=1)
a = img.root["a"]
started, finish = threading.Event(), threading.Event()
def hold():
    with img.transaction():
        started.set()
        finish.wait(10)
t = threading.Thread(target=hold)
t.start()
started.wait()
a.balance  # a tracked read here while another thread's transaction is open: the fast path
finish.set()
t.join()
w = weakref.ref(img)
img.close()
del img, a
gc.collect()
print(w() is None)
"""


def test_a_closed_image_read_through_the_fast_path_is_freed(tmp_path: Path) -> None:
    """The last image read with another thread's transaction open is not kept alive by either path: once closed
    and dropped, it is freed."""
    for env in ({}, {"MEMIMG_PURE_PYTHON": "1"}):
        done = _run(env, "-c", _CLOSED_IMAGE, str(tmp_path / f"closed-{len(env)}.db"))
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["True"], env


def test_an_entity_setattr_names_itself_and_has_a_signature() -> None:
    """An entity class's __setattr__ is called __setattr__ and inspect.signature reads it, on both paths."""
    code = (
        "import inspect; import memimg; from tests.models import Account; f = Account.__setattr__; "
        "print(f.__name__, list(inspect.signature(f).parameters))"
    )
    for env in ({}, {"MEMIMG_PURE_PYTHON": "1"}):
        done = _run(env, "-c", code)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["__setattr__", "['self',", "'name',", "'value']"], env


#: For each hot path, whether it is bound to the accelerator's function (printed as JSON by a fresh process).
_BOUND = """
import json
import memimg
from memimg.core import _compiled
from memimg.image import _encode, _engine, _feeds, _tx
from memimg.model import _accel, _tracking
from tests.models import Account
s = _accel.speedups
print(json.dumps({
    "loaded": s is not None,
    "entity __setattr__": s is not None and type(Account.__dict__["__setattr__"]) is s.FastSetattr,
    "field hook": s is not None and _tracking._FIELD is s.TrackedField,
    "changed": s is not None and _tracking.changed is s.changed,
    "apply_sets": s is not None and _engine._apply_sets is s.apply_sets,
    "encode_sets": s is not None and _encode._encode_sets is s.encode_sets,
    "sync": s is not None and _tx._sync is s.sync,
    "note_field": s is not None and _feeds.note_field is s.note_field,
    "first_noted": s is not None and _feeds.first_noted is s.first_noted,
    "deliver_to_bound": s is not None and _feeds.deliver_to_bound is s.deliver_to_bound,
    "fold_sets": s is not None and _compiled.fold_sets is s.fold_sets,
    "catch_sets": s is not None and _compiled.catch_sets is s.catch_sets,
    "encode_states": s is not None and _compiled.encode_states is s.encode_states,
    "same_dir": s is not None and _compiled.same_dir is s.same_dir,
}))
"""


def test_every_hot_path_takes_the_accelerator_when_it_is_loaded() -> None:
    """With the extension loaded, every path it compiles is bound to its function (none silently left on the
    Python code); with MEMIMG_PURE_PYTHON=1, none is."""
    for env in ({}, {"MEMIMG_PURE_PYTHON": "1"}):
        done = _run(env, "-c", _BOUND)
        assert done.returncode == 0, done.stderr
        bound = json.loads(done.stdout)
        loaded = bound.pop("loaded")
        if os.environ.get("MEMIMG_REQUIRE_ACCEL") and not env:  # CI: the extension must be there
            assert loaded
        assert bound == dict.fromkeys(bound, loaded), env


def test_the_pure_path_is_forced_by_the_environment() -> None:
    """MEMIMG_PURE_PYTHON=1 runs the pure-Python code: no compiled hook or __setattr__ anywhere."""
    code = (
        "import memimg; from memimg.model import _accel; from tests.models import Account; "
        "print(_accel.speedups, type(Account.__dict__['__setattr__']).__name__)"
    )
    done = _run({"MEMIMG_PURE_PYTHON": "1", "MEMIMG_REQUIRE_ACCEL": "1"}, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "function"]


def test_a_required_accelerator_that_does_not_load_is_refused_with_what_to_do() -> None:
    """MEMIMG_REQUIRE_ACCEL=1 with no loadable extension: importing memimg fails, saying how to build it."""
    code = "import sys; sys.modules['memimg.model._speedups'] = None; import memimg"
    done = _run({"MEMIMG_REQUIRE_ACCEL": "1"}, "-c", code)
    assert done.returncode != 0
    assert "MEMIMG_REQUIRE_ACCEL is set" in done.stderr and "pip install -e ." in done.stderr


# the built extension loaded by its file (importing memimg first would choose the accelerator already), then
# handed to memimg as a build of version 1 (no VERSION, no configure_feeds)
_STALE = (
    "import importlib.util as u, sys, types; "
    "spec = u.spec_from_file_location('memimg.model._speedups', sys.argv[1]); "
    "real = u.module_from_spec(spec); spec.loader.exec_module(real); "
    "stale = types.ModuleType('memimg.model._speedups'); "
    "stale.__dict__.update({k: v for k, v in vars(real).items() if k not in ('VERSION', 'configure_feeds')}); "
    "sys.modules['memimg.model._speedups'] = stale; "
    "import memimg; from memimg.model import _accel; print(_accel.speedups)"
)


def _built() -> str:
    """The path of the built extension (skipped where none is built; CI builds it, and requires it)."""
    model = ROOT / "memimg" / "model"
    found = [p for suffix in EXTENSION_SUFFIXES for p in model.glob(f"_speedups{suffix}")]
    if not found:
        if os.environ.get("MEMIMG_REQUIRE_ACCEL"):
            raise AssertionError("MEMIMG_REQUIRE_ACCEL is set but the accelerator is not built")
        pytest.skip(
            "the compiled accelerator is not built here: `python hatch_build.py` builds it (needs a C compiler)"
        )
    return str(found[0])


def test_an_accelerator_built_from_an_older_c_file_is_not_used() -> None:
    """A build of another version than the Python code's (an editable install's file left from before a pull):
    memimg imports and runs the pure-Python code, with a warning saying how to rebuild."""
    done = _run({}, "-W", "always", "-c", _STALE, _built())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None"]
    assert "out of date" in done.stderr and "hatch_build.py" in done.stderr


def test_a_required_accelerator_that_is_out_of_date_is_refused_with_what_to_do() -> None:
    """MEMIMG_REQUIRE_ACCEL=1 with a build of another version: importing memimg fails, saying how to rebuild."""
    done = _run({"MEMIMG_REQUIRE_ACCEL": "1"}, "-c", _STALE, _built())
    assert done.returncode != 0
    assert "out of date" in done.stderr and "pip install -e ." in done.stderr
