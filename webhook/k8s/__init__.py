"""The verifier's Kubernetes controllers (DESIGN 5.1, 5.2 and 5.5), on lightkube, async:

- approver.CsrApprover: approves a kubelet CSR only for a node whose fresh trusted verdict
  committed to the CSR's key, and denies the rest with a reason code;
- nodes.NodeController: the `node-restriction.kubernetes.io/attested` label, the `unverified`
  taint and an Event on every Node, from its stored verdict;
- leader.LeaderElector: a Lease, so that one verifier replica runs both at a time;
- controllers.lifespan: runs them inside `attest-verifier serve` and stops them on shutdown.

docs/kubernetes.md describes the flow end to end. Nothing here does any work at import, and
lightkube is imported only by the modules that use it.
"""
