"""The AWS session layer: where the base identity comes from (the standard chain), the
aiobotocore client configuration every client shares (timeouts, one attempt: retries are
ours, bounded answers, no redirects), the shared-credentials session whose clients sign with
the calling task's credentials, and the home region for global calls. Collect, discovery and
doctor all build their clients here.
"""

from __future__ import annotations

from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.credentials import ReadOnlyCredentials

from inventory.aws import credentials as creds_mod
from inventory.aws.bounded import session_class
from inventory.errors import UsageError
from inventory.model import Options

HOME_REGION = "us-east-1"  # for global calls when no region is configured


class SharedCredentialsSession(AioSession):
    """An aiobotocore session whose clients sign with the credentials of the calling task."""

    def __init__(self) -> None:
        super().__init__()
        self._context_credentials = creds_mod.ContextCredentials()

    async def get_credentials(self) -> Any:
        return self._context_credentials


def client_config(options: Options, pool: int) -> AioConfig:
    return AioConfig(
        connect_timeout=options.timeout,
        read_timeout=options.timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max(10, pool),
        # answers of bounded size, no redirects followed (bounded.py)
        http_session_cls=session_class(options.max_answer_bytes),
    )


async def base_credentials() -> tuple[ReadOnlyCredentials, AioSession]:
    """The base identity from the standard AWS chain (env, profile, SSO, IMDS, ...), frozen
    now: for short tasks. A whole collect keeps `base_source()` instead."""
    source, session = await base_source()
    return await source.get_frozen_credentials(), session


async def base_source() -> tuple[Any, AioSession]:
    """The base credentials object of the standard chain. Instance-role, SSO and web-identity
    credentials expire: botocore refreshes this object when it is asked for frozen ones."""
    session = AioSession()
    found = await session.get_credentials()
    if found is None:
        raise UsageError(
            "no AWS credentials found in the standard chain "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, SSO, instance role)"
        )
    return found, session


def client_kwargs(options: Options, creds: ReadOnlyCredentials) -> dict[str, Any]:
    """create_client keyword arguments: these credentials, our timeouts, our retries."""
    return {
        "aws_access_key_id": creds.access_key,
        "aws_secret_access_key": creds.secret_key,
        "aws_session_token": creds.token,
        "config": client_config(options, 10),
    }


def home_region(session: AioSession) -> str:
    """The region for global calls (STS, Organizations, GetRegions): configured, else us-east-1."""
    return str(session.get_config_variable("region") or HOME_REGION)
