"""Select the core implementation: compiled ``_core_c`` unless disabled or unavailable.

``RESILIO_NO_EXTENSIONS`` (set, and not ``0``) or a non-CPython interpreter selects the
pure-Python twin ``_core_py``. If the compiled module fails to import, the twin is used
and the reason is kept in ``_c_import_error``; ``core_impl`` always says which one runs,
and CI fails unless it is ``"cython"``. Type checkers always see the twin, which is the
typed reference (propcache ``_helpers.py``, multidict ``_compat.py``).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Literal

# The twin's __all__ is the contract both implementations export; importing it always
# costs one small pure-Python module at startup.
from resilio import _core_py

NO_EXTENSIONS = os.environ.get("RESILIO_NO_EXTENSIONS", "") not in ("", "0")
if sys.implementation.name != "cpython":
    NO_EXTENSIONS = True

core_impl: Literal["cython", "python"]
_c_import_error: ImportError | None = None

# Star imports are the point of this module: it re-exports one implementation's __all__.
if TYPE_CHECKING:
    from resilio._core_py import *  # noqa: F403

    core_impl = "python"
elif not NO_EXTENSIONS:
    try:
        from resilio._core_c import *  # noqa: F403

        core_impl = "cython"
    except ImportError as exc:
        from resilio._core_py import *  # noqa: F403

        core_impl = "python"
        _c_import_error = exc
else:
    from resilio._core_py import *  # noqa: F403

    core_impl = "python"

__all__ = ["core_impl"]
__all__ += _core_py.__all__

if not TYPE_CHECKING and core_impl == "cython":
    # A stale extension left in the tree by an older editable build imports fine but
    # lacks newer names; that must fail here, not as a confusing error far away.
    _missing = [name for name in _core_py.__all__ if name not in globals()]
    if _missing:
        raise ImportError(
            f"resilio._core_c does not export {_missing}: it is out of date with "
            "resilio._core_py; rebuild it (pip install -e .)"
        )
