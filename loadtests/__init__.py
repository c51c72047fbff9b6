"""Load tests (locust scenarios) and the benchmark harness for vgate (see loadtests/README.md)."""
