"""Step 6 of the request path: carry the request to the tenant's API server and stream back."""

from gateway.forward.forwarder import Forwarder, UpstreamFailure

__all__ = ["Forwarder", "UpstreamFailure"]
