"""The Redis API hub."""
