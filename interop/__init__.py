"""Cross-client interop suite: run with ``tox -e interop``."""
