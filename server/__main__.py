"""``python -m server [--host H] [--port P] [--grpc-port G]``: the gateway on the default model."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from server.app import create_app
from server.backends.local import resolve_model_dir, resolve_model_repository
from server.settings import Settings
from server.shutdown import GracefulServer


def main(argv: list[str] | None = None) -> int:
    env = Settings()
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument("--host", default=env.host)
    parser.add_argument("--port", type=int, default=env.port)
    parser.add_argument("--grpc-port", type=int, default=env.grpc_port, help="also serve gRPC on this port")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    settings = env.model_copy(update={"host": args.host, "port": args.port, "grpc_port": args.grpc_port})
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # fail before binding a port, with the reason (missing model folder, unavailable backend)
        if settings.backend == "triton":
            if not settings.triton_url:
                raise RuntimeError("IVIDEOGPT_BACKEND=triton needs IVIDEOGPT_TRITON_URL (Triton's gRPC host:port)")
        elif settings.model_dir:
            resolve_model_dir(settings.model_dir)
        else:
            resolve_model_repository(settings.model_repository)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ws="websockets-sansio",  # uvicorn's websockets implementation; the legacy one warns that it is deprecated
        ws_max_size=settings.max_body_bytes,  # the body limit holds for WebSocket messages too
    )
    GracefulServer(config, app, settings.drain_s).run()  # SIGTERM drains (server/shutdown.py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
