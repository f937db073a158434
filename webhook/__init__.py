"""The verifier's HTTP service: agent API, Kubernetes admission, metrics and health."""
