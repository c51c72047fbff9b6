"""Whether a session is recorded, and its stdin: from the `sessions.recording` config.

The tenant's entry (else the defaults) sets the mode and the stdin rule; an entry for one
of the user's roles can only make it stricter — `required` over `best-effort` over `off`,
and for stdin `always` over `tty` over `never`. So "record every cluster-admin" is a role
entry, "record everything but the sandbox tenant" a default plus a tenant entry, and no
role setting can switch off what a tenant requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.model import SessionRecording

_MODES = ("off", "best-effort", "required")
_STDIN = ("never", "tty", "always")


@dataclass(frozen=True, slots=True)
class Decision:
    mode: str  # off | best-effort | required
    stdin: str  # never | tty | always

    @property
    def required(self) -> bool:
        return self.mode == "required"

    def keeps_stdin(self, tty: bool) -> bool:
        return self.stdin == "always" or (self.stdin == "tty" and tty)


class RecordingPolicy:
    def __init__(self, config: SessionRecording) -> None:
        self.config = config

    def decide(self, tenant: str, roles: tuple[str, ...]) -> Decision:
        config = self.config
        rule = config.tenants.get(tenant)
        mode = (rule.mode if rule and rule.mode else None) or config.mode
        stdin = (rule.stdin if rule and rule.stdin else None) or config.stdin
        for role in roles:
            extra = config.roles.get(role)
            if extra is None:
                continue
            if extra.mode and _MODES.index(extra.mode) > _MODES.index(mode):
                mode = extra.mode
            if extra.stdin and _STDIN.index(extra.stdin) > _STDIN.index(stdin):
                stdin = extra.stdin
        return Decision(mode, stdin)
