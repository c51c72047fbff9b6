"""Parsing a caller's `Impersonate-*` headers and the checks they imply."""

from __future__ import annotations

import pytest

from gateway.policy.nested import BadImpersonation, _checks, requested_identity


def test_parse_everything() -> None:
    req = requested_identity(
        [
            (b"Impersonate-User", b"dave"),
            (b"impersonate-group", b"g1"),
            (b"IMPERSONATE-GROUP", b"g2"),
            (b"Impersonate-Uid", b"u-1"),
            (b"Impersonate-Extra-Scopes", b"view"),
            (b"Impersonate-Extra-scopes", b"edit"),
            (b"Impersonate-Extra-example.com%2Fteam", b"a"),
            (b"Accept", b"*/*"),
        ]
    )
    assert (req.user, req.uid, req.groups) == ("dave", "u-1", ("g1", "g2"))
    assert req.extra == (("example.com/team", ("a",)), ("scopes", ("view", "edit")))


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ([(b"Impersonate-Group", b"g")], "without impersonating a user"),
        ([(b"Impersonate-User", b"a"), (b"Impersonate-User", b"b")], "only one Impersonate-User"),
        (
            [(b"Impersonate-User", b"a"), (b"Impersonate-Uid", b"1"), (b"Impersonate-Uid", b"2")],
            "only one Impersonate-Uid",
        ),
        ([(b"Impersonate-User", b"")], "empty"),
        ([(b"Impersonate-User", b"a"), (b"Impersonate-Frobnicate", b"x")], "unknown"),
        ([(b"Impersonate-User", b"a"), (b"Impersonate-Extra-", b"x")], "empty"),
        ([(b"Impersonate-User", b"a")] + [(b"Impersonate-Group", b"g")] * 100, "more than"),
    ],
)
def test_malformed(headers: list[tuple[bytes, bytes]], needle: str) -> None:
    with pytest.raises(BadImpersonation) as info:
        requested_identity(headers)
    assert needle in str(info.value)


def test_checks_mirror_the_apiserver_filter() -> None:
    req = requested_identity(
        [
            (b"Impersonate-User", b"system:serviceaccount:kube-system:builder"),
            (b"Impersonate-Uid", b"u-1"),
            (b"Impersonate-Group", b"g1"),
            (b"Impersonate-Extra-scopes", b"view"),
        ]
    )
    assert _checks(req) == [
        {
            "verb": "impersonate",
            "group": "",
            "resource": "serviceaccounts",
            "namespace": "kube-system",
            "name": "builder",
        },
        {
            "verb": "impersonate",
            "group": "authentication.k8s.io",
            "resource": "uids",
            "name": "u-1",
        },
        {"verb": "impersonate", "group": "", "resource": "groups", "name": "g1"},
        {
            "verb": "impersonate",
            "group": "authentication.k8s.io",
            "resource": "userextras",
            "subresource": "scopes",
            "name": "view",
        },
    ]
    plain = requested_identity([(b"Impersonate-User", b"system:serviceaccount:bad")])
    assert _checks(plain)[0]["resource"] == "users"
