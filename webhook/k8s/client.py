"""The lightkube client the controllers use: in-cluster (the pod's service account) or from a
kubeconfig file. Loading checks the configuration, so a bad one stops `attest-verifier serve`
at start (exit 2) instead of failing in the background."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import yaml

from attest.errors import UsageError

if TYPE_CHECKING:
    from lightkube import AsyncClient, KubeConfig

SERVICE_ACCOUNT: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
FIELD_MANAGER: Final = "attest-verifier"
# Every request but a watch (lightkube lifts the read timeout for those) answers within this.
REQUEST_TIMEOUT: Final = 10.0


def in_cluster(env: Mapping[str, str] = os.environ, service_account: Path = SERVICE_ACCOUNT) -> bool:
    """Running in a pod with a service account token: the controllers are on by default."""
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and (service_account / "token").is_file()


def controllers_enabled(
    setting: bool | None,
    kubeconfig: Path | None,
    env: Mapping[str, str] = os.environ,
    service_account: Path = SERVICE_ACCOUNT,
) -> bool:
    """--controllers/--no-controllers when given; otherwise on in a cluster or with --kubeconfig."""
    if setting is not None:
        return setting
    return kubeconfig is not None or in_cluster(env, service_account)


def load_config(kubeconfig: Path | None, service_account: Path = SERVICE_ACCOUNT) -> KubeConfig:
    """The kubeconfig file's current context, or the in-cluster service account. UsageError
    when neither is usable."""
    from lightkube import ConfigError, KubeConfig

    where = f"--kubeconfig {kubeconfig}" if kubeconfig else f"in-cluster configuration ({service_account})"
    try:
        if kubeconfig is not None:
            config = KubeConfig.from_file(kubeconfig)
        else:
            config = KubeConfig.from_service_account(service_account)
        if config.get() is None:
            raise UsageError(f"{where}: no current context")
    except ConfigError as e:
        raise UsageError(f"{where}: {e}") from None
    except KeyError as e:  # KUBERNETES_SERVICE_HOST/PORT unset, or a context naming nothing
        raise UsageError(f"{where}: {e.args[0]} is missing") from None
    except (OSError, yaml.YAMLError, TypeError, ValueError) as e:
        raise UsageError(f"{where}: not a usable kubeconfig ({str(e).splitlines()[0]})") from None
    return config


def make_client(config: KubeConfig) -> AsyncClient:
    """One client for every controller: its connection pool is shared, and it names the verifier
    as the field manager of what it patches."""
    import httpx2
    from lightkube import AsyncClient

    return AsyncClient(config, timeout=httpx2.Timeout(REQUEST_TIMEOUT), field_manager=FIELD_MANAGER)
