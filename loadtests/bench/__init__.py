"""`python -m loadtests.bench`: vgate against direct access and nginx, on this machine.

Everything listens on 127.0.0.1, every run is bounded in time, and the harness stops
what it started. See loadtests/README.md for what is measured and how.
"""
