"""Two versions of an application's models: record a log with the old one in a subprocess.

Schema tests write an old version of a models module, record a log with it in
a separate program (as in production), then open that log here with the new
version. Type names carry a per-test prefix (``{P}`` in the sources) so tests
do not see each other's classes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import uuid
from types import ModuleType
from typing import Any

import memimg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Versions:
    def __init__(self, tmp_path: Any) -> None:
        self.tmp = tmp_path
        self.prefix = f"s{uuid.uuid4().hex[:8]}"
        self.path = str(tmp_path / "shop.db")

    def source(self, text: str) -> str:
        header = (
            "from __future__ import annotations\n"
            "import attrs, memimg\n"
            "from decimal import Decimal\n"
            "from memimg import persistent\n"
        )
        return header + textwrap.dedent(text).replace("{P}", self.prefix)

    def record(self, models: str, script: str, env: dict[str, str] | None = None) -> str:
        """Run *script* (with ``models`` importable and ``path`` defined) in a subprocess."""
        d = self.tmp / f"old_{uuid.uuid4().hex[:6]}"
        d.mkdir()
        (d / "models.py").write_text(self.source(models))
        code = f"import memimg, models\nfrom decimal import Decimal\npath = {self.path!r}\n" + textwrap.dedent(script)
        full_env = {**os.environ, "PYTHONPATH": f"{d}{os.pathsep}{ROOT}", **(env or {})}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def load(self, models: str) -> ModuleType:
        """Import the new version of the models here, under a unique module name."""
        name = f"models_{uuid.uuid4().hex[:8]}"
        file = self.tmp / f"{name}.py"
        file.write_text(self.source(models))
        spec = importlib.util.spec_from_file_location(name, file)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    def open(self, module: ModuleType, **options: Any) -> memimg.MemoryImage:
        return memimg.open(self.path, root=module.Shop, **options)
