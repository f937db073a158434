"""Kubernetes manifests and their lint (`python -m deploy.lint`).

Repository tooling: not shipped in the wheel.
"""
