"""Kubernetes manifests for fleets that outgrow hand-run hosts (rendered, not applied)."""
