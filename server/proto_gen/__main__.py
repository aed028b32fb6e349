"""Regenerate the gRPC code: ``python -m server.proto_gen [OUT_ROOT]`` (needs grpcio-tools, the test extra).

The generated files are committed, so serving needs only grpcio and protobuf; a test checks
that they equal a fresh generation from the one .proto file.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO = "worldmodel/v1/worldmodel.proto"


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-Iserver/proto_gen={REPO / 'proto'}",  # imports become server.proto_gen.worldmodel.v1
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"server/proto_gen/{PROTO}",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    gen = out_root / "server" / "proto_gen" / "worldmodel" / "v1"
    for pkg in (gen.parent, gen):
        (pkg / "__init__.py").touch()
    return sorted(gen.glob("worldmodel_pb2*"))


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    for f in generate(root):
        print(f)
