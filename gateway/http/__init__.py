"""The HTTP layer: client connections and exchanges (HTTP/1.1 with httptools), request-head
classification with the never-forwarded rules, local answers (`Status` bodies), the client
address behind trusted proxies, the ASGI bridge for the gateway's own pages, and the serving
certificate. It imports no step of the request path: the steps and the pipeline build on it.
"""
