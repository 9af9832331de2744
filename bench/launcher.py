"""Launcher start-up latency: `gemma3-launch --help` and `render` for every backend (target < 0.5 s).

Prints min / median wall time over N fresh processes and whether torch was imported. A benchmark, not a test:
it never fails on speed (the machine's load decides wall time); the torch-free property is a unit test.
Usage: python bench/launcher.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = str(REPO / "jobspecs" / "lora_1b.yaml")
CASES = {
    "--help": ["--help"],
    "render local": ["render", str(REPO / "jobspecs" / "demo_270m_lora.yaml"), "--cluster", "local"],
    "render slurm": ["render", SPEC, "--cluster", "slurm"],
    "render k8s": ["render", SPEC, "--cluster", "k8s"],
}
PROBE = (
    "import sys\nfrom gemma3_launch.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules))\n"
)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    env = dict(os.environ, PYTHONPATH=str(REPO / "launcher"))
    print(f"gemma3-launch start-up, {n} fresh processes each (python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f})")
    for name, argv in CASES.items():
        times, torch = [], False
        for _ in range(n):
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env)
            times.append(time.perf_counter() - t0)
            torch |= "TORCH=1" in res.stderr
        print(f"  {name:<14} min {min(times) * 1000:6.0f} ms   median {statistics.median(times) * 1000:6.0f} ms"
              f"   torch imported: {'YES' if torch else 'no'}   {'ok' if min(times) < 0.5 else 'ABOVE 0.5 s'}")  # fmt: skip


if __name__ == "__main__":
    main()
