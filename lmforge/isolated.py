"""Run one library function in a fresh Python process: for measurements that must not share this
process, such as the peak memory of one model variant (`ru_maxrss` only grows).

    result = call("lmforge.bench.offline:bench_variant", model=None, precision="int8")

Arguments and the result travel as JSON. This and `serve.process.ServerProcess` (a server in a
process of its own, measured from outside) are the only places lmforge starts itself again.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

from lmforge.errors import LmforgeError


def call(target: str, **kwargs):
    """`module:function`(**kwargs) in a child process; its JSON-able result, or a LmforgeError
    with the end of the child's error output."""
    proc = subprocess.run([sys.executable, "-m", "lmforge.isolated", target], input=json.dumps(kwargs),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LmforgeError(f"{target} failed in its own process:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def _main() -> int:
    module, _, name = sys.argv[1].partition(":")
    function = getattr(importlib.import_module(module), name)
    try:
        result = function(**json.loads(sys.stdin.read()))
    except LmforgeError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
