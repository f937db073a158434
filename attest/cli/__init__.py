"""attestctl: the operator's command line."""
