"""fnnet's version: one number, which pyproject.toml, meson.build and the changelog repeat."""

__version__ = "0.3.0"
