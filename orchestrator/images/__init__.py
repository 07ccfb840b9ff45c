"""Images built locally, without a registry: the Debian + Python base image and the worker image."""
