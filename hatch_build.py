"""Build hook: compile the optional accelerator ``memimg.model._speedups`` into the wheel.

The extension is one C file (``memimg/model/_speedups.c``) with no dependency
but the Python headers. If it cannot be built -- no C compiler (``CC=false``
simulates that), no headers, ``MEMIMG_PURE_PYTHON=1`` -- the hook warns and
the build goes on as a pure-Python wheel: memimg then runs its pure-Python
code, with identical results (docs/performance.md, "The compiled
accelerator").

An editable install (``pip install -e .``) builds the extension next to its
source, where ``import memimg`` finds it; ``python hatch_build.py`` does the
same by hand (after editing the C file, for instance).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "memimg" / "model" / "_speedups.c"
TARGET = "memimg/model/_speedups" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def build_extension(out: Path) -> None:
    """Compile :data:`SOURCE` into the extension module *out*; raises on any failure."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    ldshared = shlex.split(sysconfig.get_config_var("LDSHARED") or "cc -shared")
    if os.environ.get("CC"):  # the compiler asked for links too (LDSHARED names the configured one)
        ldshared = cc + [flag for flag in ldshared[1:] if flag.startswith("-")]
    includes = {sysconfig.get_path("include"), sysconfig.get_path("platinclude")}
    cflags = ["-O2", "-fPIC", "-Wall", "-Werror=implicit-function-declaration", *(f"-I{d}" for d in includes if d)]
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "_speedups.o"
        for command in ([*cc, *cflags, "-c", str(SOURCE), "-o", str(obj)], [*ldshared, str(obj), "-o", str(out)]):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run by hand, outside a build
    BuildHookInterface = object  # type: ignore[assignment,misc]


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[misc]
    """Adds the compiled accelerator to a wheel, or leaves the wheel pure when it cannot be built."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if os.environ.get("MEMIMG_PURE_PYTHON"):
            warnings.warn("MEMIMG_PURE_PYTHON is set: building a pure-Python memimg", stacklevel=1)
            if version == "editable":
                (HERE / TARGET).unlink(missing_ok=True)
            return
        out = HERE / TARGET if version == "editable" else Path(self.directory) / "_speedups.build" / Path(TARGET).name
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            build_extension(out)
        except Exception as exc:
            out.unlink(missing_ok=True)  # an editable install must not keep running an older build
            warnings.warn(
                f"memimg's optional accelerator was not built, the pure-Python code will run instead "
                f"(same results, slower tracked reads and sets): {exc}",
                stacklevel=1,
            )
            print(f"WARNING: memimg accelerator not built: {exc}", file=sys.stderr)
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(out)] = TARGET


if __name__ == "__main__":
    build_extension(HERE / TARGET)
    print(f"built {TARGET}")
