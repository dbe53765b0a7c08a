"""Horovod data parallelism for the custom training loop. The only module that imports Horovod.

Keras 3 (TF >= 2.16) and Horovod 0.28.1 fit together only partly: ``DistributedOptimizer`` with
``model.fit`` runs but does NOT synchronise the ranks, Horovod's Keras callbacks fail, and the
TensorFlow helpers want the ``tf.Variable`` under each Keras variable (``v.value``). So busi
runs its own loop (``busi.train.loop``) and calls the plain TensorFlow collectives from here:
``grouped_allreduce`` for gradients (one fused reduction per step), allreduce for metric sums
and BatchNorm statistics, and a broadcast of rank 0's weights and optimizer state at the start
of each phase.

Launch with ``horovodrun -np N busi-job train job.yaml`` (Gloo), with ``srun`` and a Gloo
rendezvous server (``slurm/train-horovod.sh``: ``busi.distributed.rendezvous``) or under MPI
(``mpirun``/``srun --mpi``, needs a Horovod built with MPI).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Sequence

import horovod.tensorflow as hvd

from busi.distributed.group import Dist
from busi.distributed.launchers import RENDEZVOUS_ADDR
from busi.errors import BusiError, ConfigError, RankLost

GLOO_IFACE = "HOROVOD_GLOO_IFACE"


@dataclass(frozen=True)
class HorovodDist(Dist):
    """A rank of a Horovod job: the reductions of ``Dist`` as Horovod collectives."""

    controller: str = "gloo"

    @classmethod
    def create(cls) -> "HorovodDist":
        """Initialise Horovod (once per process) and describe this rank."""
        if os.environ.get(RENDEZVOUS_ADDR) and not os.environ.get(GLOO_IFACE):
            # horovodrun picks the interface for its ranks; srun-started ranks pick their own
            os.environ[GLOO_IFACE] = interface_towards(os.environ[RENDEZVOUS_ADDR])
        hvd.init()
        _pin_gpu(hvd.local_rank())
        rank = hvd.rank()
        return cls(
            rank=rank,
            size=hvd.size(),
            local_rank=hvd.local_rank(),
            local_size=hvd.local_size(),
            backend="horovod",
            hosts=tuple(hvd.allgather_object(socket.gethostname(), name="busi_hosts")),
            controller="mpi" if hvd.mpi_enabled() else "gloo",
        )

    def average_gradients(self, grads: Sequence[Any]) -> Sequence[Any]:
        """Mean of each gradient over ranks, in one fused grouped allreduce (inside tf.function).
        ``None`` (a variable the loss does not reach) stays ``None``: the same on every rank,
        since every rank traces the same step."""
        import tensorflow as tf

        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return list(grads)
        # Sparse gradients (embeddings) become dense: ResNet has none, and dense keeps one path.
        dense = [tf.convert_to_tensor(grads[i]) for i in present]
        reduced = hvd.grouped_allreduce(dense, op=hvd.Average, name="busi_gradients")
        out = list(grads)
        for i, g in zip(present, reduced):
            out[i] = g
        return out

    def sum_scalars(self, values: Sequence[float]) -> list[float]:
        """Sum of Python floats over ranks, in float64 (sample counts stay exact)."""
        import tensorflow as tf

        total = hvd.allreduce(tf.constant([float(v) for v in values], tf.float64), op=hvd.Sum, name="busi_scalars")
        return [float(v) for v in total.numpy()]

    def any_flag(self, flag: bool) -> bool:
        import tensorflow as tf

        total = hvd.allreduce(tf.constant([1 if flag else 0], tf.int32), op=hvd.Sum, name="busi_flag")
        return bool(int(total.numpy()[0]) > 0)

    def broadcast_model(self, model: Any, optimizer: Any) -> None:
        """Every rank takes rank 0's weights, BatchNorm statistics and optimizer state.

        Keras 3 variables are not ``tf.Variable``s; the ``tf.Variable`` under each one
        (``v.value``) is what Horovod can assign. Called after ``optimizer.build`` so that the
        optimizer's slots exist."""
        variables = [v.value for v in [*model.variables, *optimizer.variables]]
        hvd.broadcast_variables(variables, root_rank=0)

    def average_model_state(self, model: Any) -> None:
        """Average BatchNorm moving means and variances over ranks (once per epoch)."""
        import keras

        state = [
            v
            for layer in _all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        if not state:
            return
        averaged = hvd.grouped_allreduce([v.value for v in state], op=hvd.Average, name="busi_bn_state")
        for v, a in zip(state, averaged):
            v.assign(a)

    def shutdown(self) -> None:
        """Stop Horovod on this rank; peers waiting in a collective get an error at once."""
        hvd.shutdown()

    def lost(self, error: BaseException) -> RankLost | None:
        """A collective that failed because Horovod shut down under it: a peer died (its
        connection closed) or this rank's own shutdown after another's error. TensorFlow
        raises it as an op error whose text is Horovod's; that text is the only sign."""
        if isinstance(error, BusiError) or "Horovod has been shut down" not in str(error):
            return None
        peers = {r: h for r, h in enumerate(self.hosts) if r != self.rank}
        host = self.hosts[self.rank] if self.hosts else socket.gethostname()
        return RankLost(self.rank, host, peers, "Horovod has been shut down")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "controller": self.controller, "hosts": list(self.hosts)}


def _pin_gpu(local_rank: int) -> None:
    """One GPU per rank: rank ``local_rank`` of a node sees only GPU ``local_rank`` (modulo the
    GPUs it can see, so a launcher that already gave each task its own GPU, e.g.
    ``srun --gpus-per-task=1``, leaves it at that one). Must run before TensorFlow's first op."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")


def interface_towards(address: str) -> str:
    """The network interface this host reaches ``address`` by: the one holding it when it is
    this host's own (the rank on the batch node), else the one the route to it leaves by. Gloo
    binds there (``HOROVOD_GLOO_IFACE``); set that variable to choose another (an InfiniBand
    ``ib0`` beside the Ethernet the host names resolve to)."""
    import psutil  # a dependency of Horovod

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((address, 9))  # UDP: no packet is sent; the kernel picks the route
            local = s.getsockname()[0]
    except OSError as e:
        raise ConfigError(f"{RENDEZVOUS_ADDR}={address}: no route to the rendezvous server ({e}); set "
                          f"{GLOO_IFACE} to the interface the nodes share") from None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == local for a in addresses):
            return name
    raise ConfigError(f"{RENDEZVOUS_ADDR}={address}: no interface holds {local}, the address the route to it "
                      f"leaves from; set {GLOO_IFACE} to the interface the nodes share")


def _all_layers(model: Any) -> list[Any]:
    """Every layer of a model, nested models (the ResNet50 backbone) included, in a fixed order."""
    out: list[Any] = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_all_layers(layer))
    return out
