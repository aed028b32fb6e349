"""Regenerate the client's gRPC code: ``python -m ivideogpt_client.proto_gen [OUT_ROOT] [--proto DIR]``.

Generated from the repository's one .proto file (``proto/``) with grpcio-tools (the client's
``dev`` extra), and committed, so the client needs only grpcio and protobuf. One change to what
protoc writes: the descriptors go into a private pool instead of protobuf's default one, because
the gateway's own generated code (``server.proto_gen``) registers the same ``worldmodel.v1``
names and one process (a test run, an app embedding both) may import both. A test checks that
the committed files equal a fresh generation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # clients/python
DEFAULT_PROTO = Path(__file__).resolve().parents[4] / "proto"  # the repository's proto/
PROTO = "worldmodel/v1/worldmodel.proto"
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


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
    messages = gen / "worldmodel_pb2.py"
    text = messages.read_text()
    if text.count(DEFAULT_POOL) != 1:
        raise RuntimeError(f"{messages}: expected one {DEFAULT_POOL!r} (a new protoc layout?)")
    messages.write_text(text.replace(DEFAULT_POOL, PRIVATE_POOL))
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
