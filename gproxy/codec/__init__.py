"""Sans-I/O codecs: bytes in, dataclasses out.

Nothing in this package imports ``socket`` or ``gevent``. A parse function
returns ``None`` when it needs more bytes, or ``(message, bytes_used)``; it
raises :class:`gproxy.core.errors.ClientProtocolError` for input it can never accept.
"""
