"""Stored type names resolve to registered classes, never by importing what a log names."""

from __future__ import annotations

import enum
import sys
import types
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

import memimg
from memimg.core import _types
from tests.conftest import Images
from tests.models import Box
from tests.tampering import PlantedModule, append_event, plant_module


class Loaded(enum.Enum):
    """Defined in a module already imported, and never stored by this process before it is read."""

    A = "a"


class Holder:
    class Nested(enum.Enum):
        B = "b"


@attrs.frozen
class LoadedValue:
    x: int = 0


@pytest.fixture
def planted(tmp_path: Any, monkeypatch: Any) -> Iterator[PlantedModule]:
    module = plant_module(tmp_path, monkeypatch)
    yield module
    sys.modules.pop(module.name, None)


def _image_with(make_image: Images, payload: Any) -> None:
    """An image whose log ends with a crafted event on its root (a ``Box``) holding *payload*."""
    make_image(root=Box).close()
    append_event(make_image.store(), "obj.set", 1, payload)


def _crafted(name: str) -> dict[str, Any]:
    thing = f"{name}.Thing"
    return {
        "enum": [["content", ["e", thing, "X"]]],
        "value object": [["content", ["v", thing, {}]]],
        "user value": [["content", ["x", thing, 1]]],
        "record": [["content", ["r", 2]], [[2, thing, {}]]],
        "declared record": [["content", ["r", 2]], [[2, thing, {}]], {thing: [1, []]}],
    }


@pytest.mark.parametrize("shape", ["enum", "value object", "user value", "record", "declared record"])
def test_a_type_named_by_the_log_is_never_imported(planted: PlantedModule, make_image: Images, shape: str) -> None:
    """A log naming a type in a module that is importable but not imported does not import it: opening
    raises UnknownTypeError, which says which module to import and how, how to declare the old name, and
    -- for what removed_types can drop (objects, value objects, user values; not enum members) -- how to
    declare the type removed."""
    _image_with(make_image, _crafted(planted.name)[shape])
    with pytest.raises(memimg.UnknownTypeError) as info:
        make_image(root=Box)
    assert not planted.imported
    message = str(info.value)
    assert f"import {planted.name} " in message and f"import_types=('{planted.name}',)" in message
    assert f"aliases=('{planted.name}.Thing',)" in message
    assert (f"removed_types=('{planted.name}.Thing',)" in message) == (shape != "enum")
    assert info.value.type_name == f"{planted.name}.Thing"


_ADVICE = {
    "enum": "@persistent(name=..., aliases=('oldshop.Thing',)) on the Enum class that replaces it",
    "value object": "@persistent(name=..., aliases=('oldshop.Thing',)) on the frozen attrs class that replaces it",
    "user value": "memimg.converter.register_value(NewType, name=..., aliases=('oldshop.Thing',), unstructure=",
    "record": "@persistent(name=..., aliases=('oldshop.Thing',)) on its new class",
    "declared record": "@persistent(name=..., aliases=('oldshop.Thing',)) on its new class",
}


@pytest.mark.parametrize("shape", list(_ADVICE))
def test_an_unknown_type_error_suggests_the_fix_for_its_kind_of_class(make_image: Images, shape: str) -> None:
    """The UnknownTypeError for a stored name no class claims says what the log stores there (objects,
    enum members, value objects, values) and how to declare the old name on the kind of class that reads
    it: @persistent(aliases=...) on an entity, an Enum or a frozen attrs class, register_value for a type
    with its own hooks."""
    _image_with(make_image, _crafted("oldshop")[shape])
    with pytest.raises(memimg.UnknownTypeError) as info:
        make_image(root=Box)
    message = str(info.value)
    stored = {"enum": "enum members", "value object": "value objects", "user value": "values"}.get(shape, "objects")
    if "differs from the code" not in message:  # not listed among the schema's differences
        assert message.startswith(f"the log stores {stored} of type 'oldshop.Thing'")
    assert _ADVICE[shape] in message
    others = {a for s, a in _ADVICE.items() if a != _ADVICE[shape]}
    assert not any(a in message for a in others)


def test_import_types_imports_the_modules_first(planted: PlantedModule, make_image: Images) -> None:
    """memimg.open(..., import_types=(...)) is the explicit opt-in: the module is imported before reading."""
    _image_with(make_image, _crafted(planted.name)["enum"])
    with make_image(root=Box, import_types=(planted.name,)) as img:
        assert planted.imported
        assert img.root.content is sys.modules[planted.name].Thing.X


def test_import_types_takes_importable_module_names(make_image: Images) -> None:
    """import_types takes a collection of module names (a bare str is refused); a module that cannot be
    imported is named in a MemimgError."""
    with pytest.raises(TypeError, match="module names"):
        make_image(import_types="shop.models")
    with pytest.raises(memimg.MemimgError, match="cannot import 'no_such_module_here' \\(from import_types\\)"):
        make_image(import_types=("no_such_module_here",))


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (["e", f"{__name__}.Loaded", "A"], Loaded.A),
        (["e", f"{__name__}.Holder.Nested", "B"], Holder.Nested.B),
        (["v", f"{__name__}.LoadedValue", {"x": 3}], LoadedValue(3)),
    ],
    ids=["enum", "nested enum", "value object"],
)
def test_enums_and_value_classes_of_imported_modules_resolve(make_image: Images, stored: Any, expected: Any) -> None:
    """An enum or frozen attrs class this process never stored is found under its default name in a
    module already imported (a log written by another process holds it)."""
    _image_with(make_image, [["content", stored]])
    with make_image(root=Box) as img:
        assert img.root.content == expected and type(img.root.content) is type(expected)


def test_a_module_getattr_is_never_run_to_find_a_stored_name(monkeypatch: Any) -> None:
    """A loaded module's names are read from its namespace: a module __getattr__ (which may import
    or compute anything) is not asked for a stored name."""
    asked: list[str] = []
    lazy = types.ModuleType("lazy_module_for_types_test")

    def module_getattr(name: str) -> Any:
        asked.append(name)
        return Loaded

    lazy.__getattr__ = module_getattr  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, lazy.__name__, lazy)
    with pytest.raises(memimg.UnknownTypeError):
        _types.resolve(f"{lazy.__name__}.Anything")
    assert asked == []


def test_only_classes_memimg_builds_without_their_code_resolve_by_module() -> None:
    """A plain class (or anything else) under a loaded module's name is not a stored type."""
    for name in ("collections.OrderedDict", "os.path", "sys.version", f"{__name__}.plant_module"):
        with pytest.raises(memimg.UnknownTypeError):
            _types.resolve(name)
