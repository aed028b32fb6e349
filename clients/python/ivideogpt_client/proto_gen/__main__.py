"""Regenerate the gRPC code: ``python -m ivideogpt_client.proto_gen [OUT_ROOT] [--proto DIR]``.

Generated from the repository's one .proto file (``proto/``) with grpcio-tools (the client's
``dev`` extra), as protoc writes it, and committed, so the client needs only grpcio and
protobuf. This is the one generated package: the gateway's servicer imports it from here (the
gateway's distribution ships this package, the SDK's stands alone). A test checks that the
committed files equal a fresh generation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # clients/python
DEFAULT_PROTO = Path(__file__).resolve().parents[4] / "proto"  # the repository's proto/
PROTO = "worldmodel/v1/worldmodel.proto"


def generate(out_root: Path, proto_dir: Path = DEFAULT_PROTO) -> list[Path]:
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-Iivideogpt_client/proto_gen={proto_dir}",  # imports become ivideogpt_client.proto_gen.worldmodel.v1
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"ivideogpt_client/proto_gen/{PROTO}",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    gen = out_root / "ivideogpt_client" / "proto_gen" / "worldmodel" / "v1"
    for pkg in (gen.parent, gen):
        (pkg / "__init__.py").touch()
    return sorted(gen.glob("worldmodel_pb2*"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ivideogpt_client.proto_gen", description=__doc__)
    parser.add_argument("out_root", nargs="?", type=Path, default=PACKAGE_ROOT)
    parser.add_argument("--proto", type=Path, default=DEFAULT_PROTO, help="folder holding worldmodel/v1/")
    args = parser.parse_args()
    for f in generate(args.out_root, args.proto):
        print(f)
