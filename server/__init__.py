"""The gateway: REST, WebSocket and gRPC front of the rollout engine (see docs/API.md)."""
