"""Errors of `vgate login` (a module of its own so the cached path imports no OAuth code)."""


class LoginError(Exception):
    """A login that cannot complete; the message is for the person at the terminal."""


class IdPUnreachable(LoginError):
    """The IdP did not answer (connection refused, DNS, TLS, timeout)."""
