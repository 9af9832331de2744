"""The distributed environment a Kubernetes training operator injects into every pod, made right for each step.

Both operators set torch's variables on EVERY pod of the job, whatever the pod runs:
- Kubeflow Training Operator v1 (PyTorchJob): RANK (the pod's index), WORLD_SIZE, MASTER_ADDR, MASTER_PORT, and with
  `nprocPerNode` also the PET_* set below;
- Kubeflow Trainer v2 (TrainJob, torch ML policy): PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR,
  PET_MASTER_PORT (torchrun reads PET_<FLAG> as its --<flag>).

A single-process step (import, export, generate) that inherits them believes it is one of WORLD_SIZE ranks and waits
for the others at `init_process_group` until the timeout. `single_process_env` therefore removes every operator and
torchrun variable and states a world of one; `rendezvous` is what the multi-node steps give torchrun: the node
rank, master address and port the operator chose, from whichever operator set them.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

#: torch.distributed's own variables (torchrun sets them per worker; PyTorchJob sets them per pod).
TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE")
MASTER_VARS = ("MASTER_ADDR", "MASTER_PORT")
#: Prefixes of variables that configure torchrun / torch elastic (PET_NNODES, TORCHELASTIC_RUN_ID, ...).
LAUNCHER_PREFIXES = ("PET_", "TORCHELASTIC_")
#: The node rank our own entrypoint exports, and the generic one.
NODE_RANK_VARS = ("GEMMA3_NODE_RANK", "NODE_RANK")


def operator_vars(environ: Mapping[str, str]) -> list[str]:
    """The names in `environ` that an operator or torchrun set to describe a distributed world."""
    return sorted(
        name
        for name in environ
        if name in TORCH_VARS or name in MASTER_VARS or name in NODE_RANK_VARS or name.startswith(LAUNCHER_PREFIXES)
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def single_process_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` for a one-process step: no operator variable survives; rank 0 of a world of 1 on loopback."""
    env = {name: value for name, value in environ.items() if name not in set(operator_vars(environ))}
    env.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),  # not the operator's port: the master pod's torchrun may hold it later
    )
    return env
