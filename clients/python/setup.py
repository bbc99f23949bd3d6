"""setup.py: generates mrank_client/mrank_pb2.py from proto/mrank.proto with protoc while the
package is built (build_py), so installed clients never run protoc. The proto is found at
$MRANK_PROTO or ../../proto/mrank.proto (this folder inside the mrank repository)."""
import os
import subprocess

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
        subprocess.run(["protoc", f"-I{os.path.dirname(proto)}",
                        f"--python_out={os.path.join(HERE, 'mrank_client')}",
                        os.path.basename(proto)], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
