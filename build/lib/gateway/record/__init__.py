"""Step 7 of the request path: one audit line and the metrics for every exchange."""

from gateway.record.recorder import Recorder

__all__ = ["Recorder"]
