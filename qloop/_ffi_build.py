"""cffi builder for qloop._qloop (API mode), run by meson at build time.

    python _ffi_build.py OUTPUT.c

The cdef is the text between ``/* cffi:begin */`` and ``/* cffi:end */`` in
each public header listed by ``qloop/qloop.h`` (in that order) and in the glue
header ``csrc/python/glue.h``: the headers are the single source of truth.

The generated wrappers keep the GIL (see csrc/python/README.md): cffi wraps
every call in Py_BEGIN/END_ALLOW_THREADS and has no option to turn that off,
so the preamble redefines those two macros as plain braces.  libqloop releases
the GIL itself, through its blocking hooks, wherever it may block.  The test
suite checks that a call through ``lib`` sees the GIL held.
"""
import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INCLUDE = os.path.join(ROOT, "csrc", "include")
GLUE_H = os.path.join(ROOT, "csrc", "python", "glue.h")

_REGION = re.compile(r"/\* cffi:begin \*/(.*?)/\* cffi:end \*/", re.S)


def public_headers():
    """Public headers in the order the umbrella header includes them."""
    with open(os.path.join(INCLUDE, "qloop", "qloop.h")) as f:
        names = re.findall(r'#include "(qloop/[\w.-]+\.h)"', f.read())
    return [os.path.join(INCLUDE, n) for n in names]


def cdef_text():
    parts = []
    for path in public_headers() + [GLUE_H]:
        with open(path) as f:
            regions = _REGION.findall(f.read())
        parts.append("/* %s */\n%s" % (os.path.basename(path), "\n".join(regions)))
    return "\n".join(parts)


PREAMBLE = r"""
/* Keep the GIL across calls into C: libqloop releases it itself (blocking
 * hooks) wherever it may block.  See csrc/python/README.md. */
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
#include "qloop/qloop.h"
#include "python/glue.h"
"""

ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source("qloop._qloop", PREAMBLE)

if __name__ == "__main__":
    ffibuilder.emit_c_code(sys.argv[1])
