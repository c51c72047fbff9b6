"""`vgate login` / `vgate logout` / `vgate kubeconfig`: the kubectl side of SSO.

`vgate login` is a kubectl exec credential plugin (client.authentication.k8s.io/v1): it
prints one ExecCredential holding an ID token, from the token cache, a silent refresh, a
browser login on a loopback redirect (authorization code + PKCE) or the device flow.
"""
