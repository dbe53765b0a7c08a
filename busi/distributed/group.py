"""What the ranks of a job do together: ``Dist``, the collectives the training loop needs.

``Dist`` itself is one process (every reduction an identity, every broadcast a no-op);
``busi.distributed.horovod.HorovodDist`` is the same interface over Horovod's collectives.
``is_primary`` decides, once, which rank logs and writes files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from busi.errors import RankLost


@dataclass(frozen=True)
class Dist:
    """Rank, size and the collective operations the training loop needs."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str = "none"
    hosts: tuple[str, ...] = ()  # the host of each rank, by rank (empty on one process)

    @property
    def is_primary(self) -> bool:
        """The rank that logs and writes files. Decided here and nowhere else."""
        return self.rank == 0

    def average_gradients(self, grads: Sequence[Any]) -> Sequence[Any]:
        """Average gradients across ranks (identity on one rank); called inside tf.function."""
        return grads

    def sum_scalars(self, values: Sequence[float]) -> list[float]:
        """Sum Python floats over ranks (identity on one rank)."""
        return [float(v) for v in values]

    def broadcast_model(self, model: Any, optimizer: Any) -> None:
        """Make every rank start from rank 0's weights and optimizer state (no-op on one rank)."""

    def any_flag(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (used to agree on stopping)."""
        return flag

    def average_model_state(self, model: Any) -> None:
        """Average the state that training changes without gradients (BatchNorm moving mean
        and variance) over ranks, so every rank validates and keeps the same model. Each rank
        updates those statistics from its own shard; called once per epoch (timm's
        ``distribute_bn``). No-op on one rank."""

    def shutdown(self) -> None:
        """Leave the job promptly after an error: peers blocked in a collective get an error
        instead of waiting for this rank forever. No-op on one rank."""

    def lost(self, error: BaseException) -> RankLost | None:
        """``error`` as the loss of another rank (a collective failed because a peer died or
        its node was lost), or None if it is anything else. One process has no peers."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the ranks of the run."""
        return {"backend": self.backend, "size": self.size, "local_size": self.local_size}
