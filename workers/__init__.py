"""The worker process: a thin trio driver around the pure Raft core (DESIGN §7).

- `workers.worker.Worker`: one worker's groups, loops and client server;
- `workers.config.WorkerConfig`: its configuration (the control pipe's first frame);
- `workers.control`: the control pipe; `python -m workers` runs a worker process;
- `workers.memtransport`: an in-memory raft transport for tests;
- `workers.testing`: an in-process cluster of workers and a small client, for tests.

See docs/worker.md.
"""

from .config import Limits, WorkerConfig, WorkerConfigError
from .worker import RoutingError, Worker, WorkerError

__all__ = ["Limits", "RoutingError", "Worker", "WorkerConfig", "WorkerConfigError", "WorkerError"]
