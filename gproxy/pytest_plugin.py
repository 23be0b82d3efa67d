"""``pytest -p gproxy.pytest_plugin``: the documented name of the pytest plugin (see ops/pytest_plugin)."""

from gproxy.ops.pytest_plugin import *  # noqa: F403
