"""TPM 2.0 node attestation: evidence, appraisal, agent and operator CLI."""

__version__ = "0.1.0"
