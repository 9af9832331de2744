"""Launcher start-up latency: `gemma3-launch --help` and `render` for every backend (target < 0.5 s).

Prints min / median wall time over N fresh processes, the CPU time (user+sys) they used - on a loaded shared machine
wall time mostly measures the queue for a core, CPU time is what start-up costs on an idle one - and whether torch
was imported. A benchmark, not a test: it never fails on speed; the torch-free property is a unit test.
Usage: python bench/launcher.py [N]
"""

from __future__ import annotations

import os
import resource
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
    print(
        f"gemma3-launch start-up, {n} fresh processes each "
        f"(python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f})"
    )
    for name, argv in CASES.items():
        times, cpu, torch = [], [], False
        for _ in range(n):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env)
            times.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            torch |= "TORCH=1" in res.stderr
        print(
            f"  {name:<14} wall min {min(times) * 1000:6.0f} ms  median {statistics.median(times) * 1000:6.0f} ms"
            f"   cpu min {min(cpu) * 1000:5.0f} ms   torch imported: {'YES' if torch else 'no'}"
            f"   {'ok' if min(min(times), min(cpu)) < 0.5 else 'ABOVE 0.5 s'}"
        )


if __name__ == "__main__":
    main()
