"""setup.py: generates mrank_client/mrank_pb2.py from proto/mrank.proto with protoc while the
package is built (build_py), so installed clients never run protoc. The proto is found at
$MRANK_PROTO or ../../proto/mrank.proto (this folder inside the mrank repository). protoc sees
it as mrank_client/mrank.proto (a copy in a temporary folder), so the generated classes belong
to the module mrank_client.mrank_pb2 and pickle; code from protoc 3.20 or later needs the
protobuf runtime 3.20 or later (pyproject.toml)."""
import os
import shutil
import subprocess
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithStubs(build_py):
    def run(self):
        proto = os.environ.get("MRANK_PROTO") or os.path.join(HERE, "..", "..", "proto",
                                                              "mrank.proto")
        proto = os.path.abspath(proto)
        if not os.path.exists(proto):
            raise SystemExit(f"mrank-client: {proto} not found (set MRANK_PROTO)")
        with tempfile.TemporaryDirectory() as tmp:
            os.mkdir(os.path.join(tmp, "mrank_client"))
            shutil.copy(proto, os.path.join(tmp, "mrank_client", "mrank.proto"))
            subprocess.run(["protoc", f"-I{tmp}", f"--python_out={HERE}",
                            "mrank_client/mrank.proto"], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
