"""Run a DVC stage module and record what it used, for the test that checks ``dvc.yaml``'s deps.

``python tests/record_stage.py stages.train [ARGS]`` (or as torchrun's script) runs the stage as
``python -m stages.train ARGS`` would, then writes ``$RTS_RECORD_DIR/<stage>.<pid>.json`` with:

- ``modules``: every file of the project (``src/`` and ``stages/``) the process had imported;
- ``params``: every ``params.yaml`` key the stage read (``data.root``, ``seed``), recorded by handing
  the stage a copy of its params whose attribute reads are logged.

The stage's own code is not changed for this; only ``rts.config.load_params`` is wrapped, before the
stage module is imported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

_RECORDING: dict[type, type] = {}


def recording(obj: Any, prefix: str, read: set[str]) -> Any:
    """A copy of dataclass ``obj`` (recursively) that adds ``prefix + field`` to ``read`` on every
    read of a field that is not itself a section."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    cls = type(obj)
    names = {f.name for f in dataclasses.fields(obj)}
    sections = {n for n in names if dataclasses.is_dataclass(getattr(obj, n))}
    if cls not in _RECORDING:
        def __getattribute__(self, name, _names=names, _sections=sections):
            value = object.__getattribute__(self, name)
            if name in _names and name not in _sections:
                object.__getattribute__(self, "_record_read").add(object.__getattribute__(self, "_record_prefix") + name)
            return value

        _RECORDING[cls] = type(cls.__name__, (cls,), {"__getattribute__": __getattribute__, "__module__": cls.__module__})
    copy = object.__new__(_RECORDING[cls])
    for name in names:
        object.__setattr__(copy, name, recording(object.__getattribute__(obj, name), f"{prefix}{name}.", read))
    object.__setattr__(copy, "_record_read", read)
    object.__setattr__(copy, "_record_prefix", prefix)
    return copy


def project_modules() -> list[str]:
    """Loaded files of the ``rts`` package (as ``src/rts/...``) and of ``stages/`` (from the cwd)."""
    import rts

    bases = {"src/rts": Path(rts.__file__).resolve().parent, "stages": (Path.cwd() / "stages").resolve()}
    out = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        path = Path(path).resolve()
        for name, base in bases.items():
            if path.is_relative_to(base):
                out.add(f"{name}/{path.relative_to(base)}")
    return sorted(out)


def main() -> int:
    stage, args = sys.argv[1], sys.argv[2:]
    sys.argv = [stage, *args]
    sys.path[0] = str(Path.cwd())  # what `python -m stages.X` puts first (this script's folder otherwise)
    if not os.environ.get("RTS_RECORD_DIR"):  # e.g. a queued experiment: run the stage, record nothing
        runpy.run_module(stage, run_name="__main__", alter_sys=True)
        return 0
    out_dir = Path(os.environ["RTS_RECORD_DIR"])
    import rts.config

    read: set[str] = set()
    real = rts.config.load_params
    rts.config.load_params = lambda path: recording(real(path), "", read)
    code: Any = 0
    try:
        runpy.run_module(stage, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        # the stage module itself ran as __main__, so sys.modules no longer names its file
        own = f"{stage.replace('.', '/')}.py"
        record = {"stage": stage.split(".")[-1], "args": args, "modules": sorted({*project_modules(), own}), "params": sorted(read)}
        (out_dir / f"{record['stage']}.{os.getpid()}.json").write_text(json.dumps(record, indent=1))
    return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
