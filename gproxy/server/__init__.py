"""The composition root: Proxy binds, starts, stops and reloads listeners; acceptor, TLS,
PROXY header. Imports everything below it, never ops/.
"""
