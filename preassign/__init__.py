"""preassign: pre-assignment of snack boxes and demand per snack, on Dask."""

from __future__ import annotations

__version__ = "0.1.0"

from .core.params import ParamError, Params  # noqa: E402

__all__ = ["ParamError", "Params", "__version__"]
