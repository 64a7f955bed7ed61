"""kvdm: KV-cache metadata on disaggregated memory.

The top-level folders are the subpackages of one ``kvdm`` namespace (see docs/DESIGN.md: Layout);
``package_dir`` maps them, so nothing is installed under a generic top-level name.
"""

import importlib.util
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def native_build():  # noqa: ANN201 - native/build.py as a module (it is not importable by name)
    spec = importlib.util.spec_from_file_location("kvdm_native_build", os.path.join(HERE, "native", "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SUBPACKAGES = ["index", "transport", "native", "traces", "experiments"]

setup(
    name="kvdm",
    version="0.1.0",
    description="KV-cache metadata indexes on disaggregated memory, driven by one-sided verbs",
    python_requires=">=3.10",
    # ``kvdm`` itself is a namespace package (PEP 420): it has no folder of its own.
    packages=[f"kvdm.{p}" for p in SUBPACKAGES] + ["kvdm.transport.softroce", "kvdm.traces.fixtures"]
    + [f"kvdm.experiments.{room}" for room in ("cli", "replay", "bench", "figures", "reproduce")],
    package_dir={f"kvdm.{p}": p for p in SUBPACKAGES},
    package_data={
        "kvdm.native": ["*.h", "*.c", "*.inc", "*.cdef"],
        "kvdm.transport.softroce": ["*.sh", "*.py"],
        "kvdm.traces.fixtures": ["*.jsonl", "*.jsonl.gz", "*.csv", "*.md"],
    },
    cffi_modules=["native/build.py:ffibuilder"],
    # the token layer's fast path, a CPython extension on numpy's C API (native/pyext/chunkkeys.c)
    ext_modules=[native_build().chunkkeys_extension()],
    setup_requires=["cffi>=1.15", "numpy>=1.24"],
    install_requires=[
        "cffi>=1.15",
        "numpy>=1.24",
        "pandas>=2.0",
        "pyarrow>=12",
        "matplotlib>=3.7",
        "scipy>=1.10",
        "redis>=5.0",
        "hiredis>=2.0",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80", "pytest-timeout>=2.1"],
        "dev": ["ruff>=0.5"],
        # the token-level API's retrieve_mask (kvdm.index.tokens); pinned: an unpinned torch
        # pulls a multi-GB CUDA build, 2.13.0 is the local CPU build these machines serve
        "torch": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["kvdm=kvdm.experiments.cli:main"]},
)
