"""cffi (API mode) build of kvdm's native code: the dm.h transport, its backends and the indexes.

Every ``native/*.c`` is compiled into one extension, ``kvdm.native._kvdm_native``, so indexes
call the transport directly and Python crosses into C once per batch. Declarations exposed to
Python come from ``native/*.cdef`` (one file per component), from ``kvidx.h`` itself (its
preprocessor lines dropped) and, for each index, its ``P_ops()`` accessor for every
``KVIDX_DECLARE(P)`` in the headers; the public headers (every
``*.h`` not ending in ``_internal.h``) are included in the generated module. Templates compiled
once per key width (``*.inc``: the index implementations) are included only by their
``<index>_k8.c`` / ``<index>_k32.c`` sources, never by the generated module.

One more extension, ``kvdm.native._chunkkeys`` (:func:`chunkkeys_extension`, built by setup.py
beside the cffi one): ``pyext/chunkkeys.c``, the token layer's per-prompt chunk keys as a plain
CPython call on numpy's C API, compiled with ``chunkhash.c`` (the hash's one source). Its
sources are in ``pyext/`` so the cffi module's ``*.c`` does not take them.

Environment knobs (read at build time):
  KVDM_VERBS=0|1   force the verbs backend off/on (default: on if <infiniband/verbs.h> exists)
  KVDM_ASAN=1      build with AddressSanitizer (run with libasan preloaded; see .ci/test)
  KVDM_DEBUG=1     -O0 -g
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = "kvdm.native._kvdm_native"


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value in (None, "") else value not in ("0", "false", "no")


def have_verbs() -> bool:
    """True when the verbs backend will be built (rdma-core headers present, or forced)."""
    return _flag("KVDM_VERBS", os.path.exists("/usr/include/infiniband/verbs.h"))


def _sorted(pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(HERE, pattern)))


def header_cdef(path: str) -> str:
    """A header as cffi declarations: its preprocessor lines (with their continuations) dropped.
    For headers written to be that (kvidx.h), so the declarations have one source."""
    out, cont = [], False
    with open(path) as f:
        for line in f:
            if cont or line.lstrip().startswith("#"):
                cont = line.rstrip("\n").endswith("\\")
                continue
            out.append(line)
    return "".join(out)


def index_cdefs() -> str:
    """The ops accessor of every index at every key width: P_ops() for each KVIDX_DECLARE(P) in
    the headers (an index's header is the one list of what it compiles to)."""
    names = []
    for path in _sorted("*.h"):
        with open(path) as f:
            names += re.findall(r"^KVIDX_DECLARE\((\w+)\)", f.read(), re.MULTILINE)
    return "".join(f"const kvidx_ops *{p}_ops(void);\n" for p in names)


def build_flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags of kvdm's C (both extensions), after KVDM_DEBUG and KVDM_ASAN."""
    cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]
    ldflags: list[str] = []
    cflags += ["-O0", "-g"] if _flag("KVDM_DEBUG", False) else ["-O2", "-g"]
    if _flag("KVDM_ASAN", False):
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    return cflags, ldflags


def chunkkeys_extension() -> Any:
    """``kvdm.native._chunkkeys``: the token layer's per-prompt fast path (pyext/chunkkeys.c, a
    CPython extension on numpy's C API: a cffi call costs more than hashing a 1k-token prompt)
    over the same native/chunkhash.c. Paths are relative to the checkout (setup.py's folder)."""
    import numpy
    from setuptools import Extension

    cflags, ldflags = build_flags()
    rel = os.path.relpath(HERE, os.path.dirname(HERE))
    return Extension(
        "kvdm.native._chunkkeys",
        sources=[os.path.join(rel, "pyext", "chunkkeys.c"), os.path.join(rel, "chunkhash.c")],
        include_dirs=[rel, numpy.get_include()],
        libraries=["crypto"],
        extra_compile_args=cflags + ["-fvisibility=hidden"],  # only PyInit__chunkkeys is exported
        extra_link_args=ldflags,
    )


def make_ffi() -> FFI:
    ffi = FFI()
    cdefs = _sorted("*.cdef")
    # dm.cdef first and then kvidx.h: the other components refer to their types
    cdefs.sort(key=lambda p: (os.path.basename(p) != "dm.cdef", p))
    for i, path in enumerate(cdefs):
        with open(path) as f:
            ffi.cdef(f.read())
        if i == 0:
            ffi.cdef(header_cdef(os.path.join(HERE, "kvidx.h")))
            ffi.cdef(index_cdefs())
    headers = [os.path.basename(p) for p in _sorted("*.h") if not p.endswith("_internal.h")]
    headers.sort(key=lambda h: (h != "dm.h", h))
    sources = [p for p in _sorted("*.c")]
    cflags, ldflags = build_flags()
    macros: list[tuple[str, str | None]] = []
    # crypto: OpenSSL's SHA-256 for the token layer's chunk keys; hiredis: the C-timed Redis client
    libraries: list[str] = ["rt", "m", "crypto", "hiredis"]
    if have_verbs():
        macros.append(("KVDM_HAVE_VERBS", "1"))
        libraries += ["ibverbs"]
    ffi.set_source(
        MODULE,
        "\n".join(f'#include "{h}"' for h in headers),
        sources=sources,
        include_dirs=[HERE],
        define_macros=macros,
        libraries=libraries,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
