"""The streams of exec, attach, cp and port-forward, as the gateway reads and speaks them.

Codecs (`websocket`, `spdy`, `channels`), what an upgrade request asks for (`upgrade`),
which upgrade each tenant accepts (`capabilities`), passive observers that turn a tunnelled
session into terminal events for a recording (`observe`), and the bridges between a client
speaking WebSocket and a tenant speaking SPDY/3.1, or the other way round (`bridge`).
`session.StreamSession` is what the forward step drives for one upgrade request.
Nothing here is on the path of a request that is not an upgrade.
"""
