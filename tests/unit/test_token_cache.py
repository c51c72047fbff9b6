"""The verified-token cache: expiry, LRU bound, dropping an issuer's tokens."""

from __future__ import annotations

from gateway.authn.token_cache import VerifiedTokens
from gateway.identity import Identity


def _identity(user: str, expires_at: float, issuer: str = "https://idp") -> Identity:
    return Identity(username=user, uid=user, groups=(), issuer=issuer, expires_at=expires_at)


def test_an_identity_is_served_only_before_its_expiry() -> None:
    cache = VerifiedTokens(10)
    alice = _identity("alice", expires_at=100.0)
    cache.put(b"a", alice)
    assert cache.get(b"a", now=99.9) is alice
    assert cache.get(b"a", now=100.0) is None
    assert len(cache) == 0  # dropped when found expired
    assert cache.get(b"missing", now=0.0) is None


def test_a_full_cache_evicts_the_least_recently_used() -> None:
    cache = VerifiedTokens(2)
    cache.put(b"a", _identity("a", 1e12))
    cache.put(b"b", _identity("b", 1e12))
    assert cache.get(b"a", now=0.0) is not None  # a is now the most recent
    cache.put(b"c", _identity("c", 1e12))
    assert len(cache) == 2
    assert cache.get(b"b", now=0.0) is None
    assert cache.get(b"a", now=0.0) is not None
    assert cache.get(b"c", now=0.0) is not None


def test_drop_removes_what_keep_refuses() -> None:
    cache = VerifiedTokens(10)
    cache.put(b"a", _identity("a", 1e12, issuer="https://one"))
    cache.put(b"b", _identity("b", 1e12, issuer="https://two"))
    assert cache.drop(lambda identity: identity.issuer != "https://one") == 1
    assert cache.get(b"a", now=0.0) is None
    assert cache.get(b"b", now=0.0) is not None


def test_size_zero_still_holds_one() -> None:
    cache = VerifiedTokens(0)  # the authenticator does not use the cache then
    cache.put(b"a", _identity("a", 1e12))
    cache.put(b"b", _identity("b", 1e12))
    assert len(cache) == 1
