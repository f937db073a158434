"""Persistence for the verifier: enrolled EKs, AK bindings, nonces, verdicts, policies, audit."""
