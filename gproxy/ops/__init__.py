"""How gproxy is run: the CLI, the worker supervisor, the threaded API, the pytest plugin.
The top layer: nothing in gproxy imports it but gproxy/__init__ and __main__.
"""
