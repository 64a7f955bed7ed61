"""The native build's view of the indexes: every index is one template, ``native/<name>.inc``,
that native/build.py finds by its KVIDX_TEMPLATE line and compiles once per key width, and the
registry entry naming it (``native=``) is all Python needs (docs/extending.md)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import kvdm.index as kindex
from kvdm.native import build, ffi, lib

NATIVE_DIR = Path(build.HERE)

#: the smallest template the build accepts: every operation refused, but every function there
TOY = r"""
/* toy.inc - an index template with nothing in it but what the build needs. */
KVIDX_TEMPLATE(toy)
#include <stdlib.h>
#include <string.h>

#define P_T KVIDX_PREFIX(toy) /* toy_k8 or toy_k32 */
#define P(x) KVIDX_CAT3(P_T, _, x)

struct P_T {
    kvidx_stats st;
};

int P(open)(dm_ctx *ctx, const kvidx_opts *opts, P_T **out, char *err, size_t errlen) {
    *out = calloc(1, sizeof **out);
    return *out ? DM_OK : DM_ENOMEM;
}
void P(close)(P_T *h) { free(h); }
const char *P(error)(const P_T *h) { return "the toy index does nothing"; }
int P(get)(P_T *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, uint64_t *lat_ns) {
    return DM_EINVAL;
}
int P(put)(P_T *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat_ns) { return DM_EINVAL; }
int P(delete)(P_T *h, const uint8_t *keys, size_t n, uint8_t *found, uint64_t *lat_ns) { return DM_EINVAL; }
int P(prefix)(P_T *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, size_t *matched) {
    return DM_EINVAL;
}
int P(range)(P_T *h, const uint8_t *lo, const uint8_t *hi, uint64_t limit, size_t *count) { return DM_EINVAL; }
void P(range_fetch)(const P_T *h, uint8_t *keys, uint64_t *vals) {}
int P(range_count)(P_T *h, const uint8_t *los, const uint8_t *his, size_t n, int64_t *counts, uint64_t *lat_ns) {
    return DM_EINVAL;
}
void P(stats)(const P_T *h, kvidx_stats *out) { memcpy(out, &h->st, sizeof *out); }
void P(reset_stats)(P_T *h) { memset(&h->st, 0, sizeof h->st); }
int P(debug_lock)(P_T *h, const uint8_t *key) { return DM_EINVAL; }

KVIDX_DEFINE_OPS(P_T, KVDM_KEY_BYTES, "gets puts")
"""


def test_every_native_entry_is_a_compiled_template() -> None:
    """The build compiled every template it found, at both widths, and the registry's native
    entries are exactly those templates, each with its own root slots."""
    found = build.templates()
    assert set(found) == {"chime", "sherman", "race"}
    assert all(Path(p).parent == NATIVE_DIR for p in found.values())
    entries = [kindex.backend(n) for n in kindex.available() if kindex.backend(n).native]
    assert {b.native for b in entries} == set(found)
    for b in entries:
        assert b.remote_memory and b.factory is None
        for width in build.KEY_WIDTHS:
            ops = getattr(lib, f"{b.native}_k{width}_ops")()
            assert ffi.string(ops.name).decode() == f"{b.native}_k{width}" and ops.key_bytes == width
    slots = [s for b in entries for s in b.root_slots]
    assert len(set(slots)) == len(slots) and all(0 <= s < 64 for s in slots)
    # the translation units are the build's own, one per template and width
    generated = sorted(p.name for p in (NATIVE_DIR / build.GENERATED).glob("*.c"))
    assert generated == sorted(f"{p}.c" for p in build.prefixes(list(found)))


def _compile(source: Path, include: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gcc", *build.CFLAGS, "-Werror", "-O1", "-I", str(include), "-I", str(NATIVE_DIR),
                           "-c", str(source), "-o", str(out)], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")
def test_a_new_index_is_one_template_file(tmp_path: Path) -> None:
    """What docs/extending.md promises: one .inc with a KVIDX_TEMPLATE line is found, its
    generated translation units compile cleanly (-Wall -Wextra -Werror) at both widths and
    define the ops accessor; the definitions are checked against the declaration the marker
    makes."""
    (tmp_path / "toy.inc").write_text(TOY)
    (tmp_path / "helper.inc").write_text("/* included by templates only: no marker */\n")
    assert build.templates(str(tmp_path)) == {"toy": str(tmp_path / "toy.inc")}
    units = build.write_translation_units(["toy"], str(tmp_path / build.GENERATED))
    assert [Path(u).name for u in units] == ["toy_k32.c", "toy_k8.c"]
    for unit in units:
        obj = tmp_path / (Path(unit).stem + ".o")
        proc = _compile(Path(unit), tmp_path, obj)
        assert proc.returncode == 0, proc.stderr
        symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True).stdout
        assert f" T {Path(unit).stem}_ops\n" in symbols and f" T {Path(unit).stem}_get\n" in symbols
    # a definition that does not match the API is an error, not a silent second function
    (tmp_path / "toy.inc").write_text(TOY.replace("int P(put)(P_T *h, const uint8_t *keys, const uint64_t *vals,",
                                                  "int P(put)(P_T *h, const uint8_t *keys, uint64_t *vals,"))
    proc = _compile(Path(units[1]), tmp_path, tmp_path / "bad.o")
    assert proc.returncode != 0 and "toy_k8_put" in proc.stderr


def test_a_template_is_named_as_its_file(tmp_path: Path) -> None:
    (tmp_path / "toy.inc").write_text("KVIDX_TEMPLATE(other)\n")
    with pytest.raises(ValueError, match=r"toy.inc: an index template has one KVIDX_TEMPLATE line naming its file"):
        build.templates(str(tmp_path))


def test_a_native_entry_needs_its_root_slots() -> None:
    with pytest.raises(ValueError, match="native index 'x' needs root_slots"):
        kindex.Backend("x", native="x")
    with pytest.raises(ValueError, match="needs a factory"):
        kindex.Backend("x")
    assert kindex.Backend("x", native="x", root_slots=(6, 7)).remote_memory


def test_an_entry_whose_template_is_not_built_says_so(dm) -> None:
    entry = kindex.Backend("x", native="nosuch", root_slots=(6, 7))
    with pytest.raises(ValueError, match=r"index .x.: its C template native/nosuch.inc is not compiled"):
        entry.open(dm, 8)
