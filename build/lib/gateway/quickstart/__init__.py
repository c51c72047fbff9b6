"""`vgate quickstart`: the gateway on embedded defaults, with a local OpenID Provider and
the API server the user already has as the first tenant. For trying vgate, not production."""
