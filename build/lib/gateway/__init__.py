"""vgate: an authentication gateway for Kubernetes virtual clusters."""

__version__ = "0.1.0"
