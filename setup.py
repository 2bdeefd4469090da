"""Build the compiled core ``resilio._core_c``; all other metadata lives in pyproject.toml.

Environment switches:

- ``RESILIO_NO_EXTENSIONS=1``: build no extension (pure-Python install; the selector
  ``resilio._core`` then uses the twin ``resilio._core_py``).
- ``RESILIO_DEBUG=1``: compile with ``-O0 -g`` and C asserts on.
- ``RESILIO_SANITIZE=address|thread|undefined`` (comma-separated to combine): add
  ``-fsanitize=...``. An ASan/TSan build must run under a Python that loads the
  sanitizer runtime first (e.g. ``LD_PRELOAD=$(cc -print-file-name=libasan.so)``).

On CPython a failed C build fails the install: there is deliberately no fallback, so a
broken toolchain can never silently ship the slow core.
"""

from __future__ import annotations

import os
import platform
from glob import glob

from setuptools import Extension, find_packages, setup

SANITIZERS = frozenset({"address", "thread", "undefined"})


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _extensions() -> list[Extension]:
    if _flag("RESILIO_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
        return []

    # Imported here so a pure-Python install does not need Cython.
    from Cython.Build import cythonize

    # Cython 3 output compiles clean under these with GCC 12 (checked down to Cython 3.0),
    # so no -Wno-* is needed. If a Cython or compiler upgrade makes its *generated* code
    # warn, silence that one warning here (-Wno-unused-function, -Wno-unused-parameter
    # and -Wno-missing-field-initializers are the usual ones) and keep -Werror.
    compile_args = ["-std=c11", "-Wall", "-Wextra", "-Werror"]
    link_args: list[str] = []
    undef_macros: list[str] = []
    if _flag("RESILIO_DEBUG"):
        compile_args += ["-O0", "-g"]
        undef_macros.append("NDEBUG")  # Python's CFLAGS define it; debug builds want asserts
    else:
        compile_args.append("-O2")

    sanitize = os.environ.get("RESILIO_SANITIZE", "").strip()
    if sanitize:
        wanted = [s.strip() for s in sanitize.split(",") if s.strip()]
        unknown = sorted(set(wanted) - SANITIZERS)
        if unknown:
            raise SystemExit(
                f"RESILIO_SANITIZE: unknown sanitizer(s) {unknown}; "
                f"expected a comma-separated subset of {sorted(SANITIZERS)}"
            )
        fsanitize = "-fsanitize=" + ",".join(wanted)
        compile_args += [fsanitize, "-fno-omit-frame-pointer", "-g"]
        link_args.append(fsanitize)

    headers = sorted(glob("csrc/*.h"))
    ext = Extension(
        "resilio._core_c",
        sources=["resilio/_core_c.pyx"],
        include_dirs=["csrc"],
        depends=[*headers, "resilio/_core_c.pxd"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        undef_macros=undef_macros,
    )
    runner = Extension(
        "resilio._runner_c",
        sources=["resilio/_runner_c.pyx"],
        include_dirs=["resilio", "csrc"],
        depends=[*headers, "resilio/_runner_slots.h", "resilio/_core_c.pxd"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        undef_macros=undef_macros,
    )
    shm = Extension(
        "resilio._shm_c",
        sources=["resilio/_shm_c.pyx"],
        include_dirs=["csrc"],
        depends=[*headers, "resilio/_core_c.pxd"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        undef_macros=undef_macros,
    )
    return cythonize(
        [ext, runner, shm],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(
    # The header-only C core is installed as resilio/csrc/*.h (package data), so code
    # that cimports resilio._core_c can compile against the same headers.
    packages=[*find_packages(include=["resilio", "resilio.*"]), "resilio.csrc"],
    package_dir={"resilio.csrc": "csrc"},
    ext_modules=_extensions(),
)
