"""The node agent: enrolls the node's TPM with the verifier and answers its challenges."""
