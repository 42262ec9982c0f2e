"""The package version, defined here only.

``pyproject.toml`` reads it at build time (``[tool.setuptools.dynamic]``, statically: this
module is never imported by the build, so it must stay a plain string assignment).
"""

__version__ = "0.1.0"
