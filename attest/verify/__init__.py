"""Verifier side: pure-Python appraisal of TPM evidence (no TPM needed)."""
