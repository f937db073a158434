"""attest-verifier's HTTP service: the agent API, the admin API, health and metrics.

`webhook.app.create_app(settings, store)` builds the ASGI application; `attest-verifier serve`
(webhook.cli) serves it over TLS. The decisions live in webhook.service and webhook.admin,
which know nothing of HTTP.
"""
