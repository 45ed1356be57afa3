"""Regenerate the Python code of the protobuf contracts.

    python -m fraud.protogen            # writes fraud/v1/*_pb2.py(i) from proto/fraud/v1/*.proto

The generator is grpcio-tools, pinned in pyproject.toml so the output is reproducible;
tests/unit/contracts/test_wire.py checks that the checked-in code matches the .proto files.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc on every .proto under ``proto_dir``; return the files written."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {proto_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    stems = [out_dir / name.removesuffix(".proto") for name in protos]
    return [stem.with_name(stem.name + "_pb2" + ext) for stem in stems for ext in (".py", ".pyi")]


def main() -> int:
    written = generate(ROOT)
    for path in written:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
