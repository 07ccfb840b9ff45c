"""Talking to the hub's REST API: the sync/async client and following jobs to their end."""
