"""Python SDK of the iVideoGPT world model gateway: REST (sync and async, JSON or msgpack) and gRPC, numpy in and out.

>>> import numpy as np
>>> from ivideogpt_client import WorldModelClient
>>> client = WorldModelClient("http://127.0.0.1:8000")
>>> with client.session(client.sample_context(), seed=0) as s:
...     frames, rewards = s.step(np.zeros((4, 4), np.float32))
"""

from ivideogpt_client.async_client import AsyncSession, AsyncWorldModelClient
from ivideogpt_client.client import Session, WorldModelClient
from ivideogpt_client.errors import (
    AtCapacity,
    Conflict,
    InvalidRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    SessionNotFound,
    Unauthorized,
    WorldModelError,
)
from ivideogpt_client.grpc_client import GrpcSession, GrpcWorldModelClient
from ivideogpt_client.plan import Plan

__all__ = [
    "AsyncSession",
    "AsyncWorldModelClient",
    "AtCapacity",
    "Conflict",
    "GrpcSession",
    "GrpcWorldModelClient",
    "InvalidRequest",
    "PayloadTooLarge",
    "Plan",
    "ServiceUnavailable",
    "Session",
    "SessionNotFound",
    "Unauthorized",
    "WorldModelClient",
    "WorldModelError",
]
