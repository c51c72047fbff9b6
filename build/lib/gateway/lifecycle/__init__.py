"""The lifecycle manager: tenants' virtual clusters created, paused, woken, upgraded, deleted.

It meets the proxy only at the route registry (`gateway.registry`); neither imports the other.
"""
