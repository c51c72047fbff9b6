"""The HTTP/1.1 server layer: client connections, exchanges, and the serve loop."""
