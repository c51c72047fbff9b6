"""TLS objects whose record calls go straight to OpenSSL's wrapper.

uvloop's TLS transport drives an `ssl.SSLObject` (memory BIOs): every read, write and
pending check of every connection goes through that class's Python methods, each of which
only forwards to the C object it holds. `DirectSSLObject` binds those three to the C
object's own methods when it is created, so uvloop (which looks them up once per connection)
calls C directly. Same calls, same arguments, same exceptions; the rest of `SSLObject`
(handshake, certificates, ALPN, shutdown) is unchanged.

This leans on `SSLObject._create` and the `_sslobj` it sets, private to CPython's `ssl`
module (as in the 3.11 this runs on); `tests/unit/test_tls_object.py` fails if either moves.
"""

from __future__ import annotations

import ssl
from typing import Any


class DirectSSLObject(ssl.SSLObject):
    """An `ssl.SSLObject` whose `read`, `write` and `pending` are the C object's methods."""

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        made = super()._create(*args, **kwargs)  # type: ignore[misc]
        inner = made._sslobj
        made.read = inner.read
        made.write = inner.write
        made.pending = inner.pending
        return made


def direct_records(context: ssl.SSLContext) -> ssl.SSLContext:
    """`context`, whose `wrap_bio` (what uvloop calls) now makes `DirectSSLObject`s."""
    context.sslobject_class = DirectSSLObject
    return context
