"""The token geometry's former place: it lives in :mod:`captum_tokenlrp._utils.geometry`.

The adapters need :class:`TokenLayout` and the engine imports the adapters, so the geometry sits
below both (in ``_utils``, which imports nothing of the package) and imports flow one way. This
module re-exports it for the modules that still import it from here.
"""

from __future__ import annotations

from .._utils.geometry import *  # noqa: F403  (every public name, from its new place)
from .._utils.geometry import __all__ as __all__
