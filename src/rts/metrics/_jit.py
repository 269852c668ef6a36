"""``njit``: numba's ``njit(cache=True, nogil=True)`` with its on-disk cache keyed by the module's
content instead of its path.

numba keeps compiled kernels beside the source (``__pycache__``) or, with ``NUMBA_CACHE_DIR``, in a
folder named after the source's absolute path. Either way a copy of the same code at a new path
compiles again: every clone the experiment runner makes, every ``dvc exp run --queue`` workspace and
every fresh checkout spends ~10 s of CPU per process compiling the metric kernels before its first
validation (measured on the 2-core CI machine; the kernels are the same bytes each time).

:class:`ContentCacheLocator` puts the cache of a module of this package in
``<root>/<module>-<sha256 of its source>``, so every copy of the same source shares one cache and a
changed source never meets code compiled from another version. numba still checks each entry
against the function's bytecode and the CPU it was compiled for. As with numba's own cache, a
global of another module that a kernel reads is frozen into the compiled code: here only
``rts.io.IGNORE`` (the format's 255), and the kernels call no compiled function of another
module. The root is ``$NUMBA_CACHE_DIR/rts-seg`` when that is set, else
``$XDG_CACHE_HOME/rts-seg/numba`` (default ``~/.cache/rts-seg/numba``). When the root cannot be
created or written, numba's own locators apply as before (the kernels compile once per copy);
results are the same either way.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numba
from numba.core import caching

_PACKAGE = Path(__file__).resolve().parents[1]  # src/rts


def cache_root() -> Path:
    """Where the content-keyed caches live (see the module docstring)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "rts-seg"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rts-seg" / "numba"


# numba's locator bases and registry; 0.68 names the registry CacheImpl (before: _CacheImpl). Should a
# later numba rename them, the kernels are cached by numba's own locators (once per copy) instead.
_MIXIN = getattr(caching, "_SourceFileBackedLocatorMixin", None)
_BASE = getattr(caching, "_CacheLocator", None)
_REGISTRY = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
_BASES = (_MIXIN, _BASE) if _MIXIN and _BASE else (object,)


class ContentCacheLocator(*_BASES):
    """numba cache locator for this package's modules: one folder per (module name, source content)."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        stamp = self.get_source_stamp()  # numba's sha256 of the file's bytes, cached per (path, mtime, size)
        self._cache_path = str(cache_root() / f"{Path(py_file).stem}-{bytes(stamp).hex()[:24]}")

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            inside = Path(py_file).resolve().is_relative_to(_PACKAGE)
        except OSError:
            return None
        if not inside:
            return None  # someone else's njit: numba's own locators
        try:
            return super().from_function(py_func, py_file)  # None when the folder cannot be written
        except (RuntimeError, TypeError):  # no home directory; a source stamp that is no content hash (numba < 0.68)
            return None


def registered() -> bool:
    """Whether numba looks up this package's kernels with :class:`ContentCacheLocator`."""
    return ContentCacheLocator in getattr(_REGISTRY, "_locator_classes", ())


if _BASES != (object,) and isinstance(getattr(_REGISTRY, "_locator_classes", None), list) and not registered():
    _REGISTRY._locator_classes.insert(0, ContentCacheLocator)  # the list is shared by every kind of numba cache

njit = functools.partial(numba.njit, cache=True, nogil=True)
