"""Changing a running fleet: the worker repository (`--worker-src`), drain, rolling update."""
