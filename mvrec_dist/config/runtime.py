"""Where a job runs: an existing Ray cluster, or an embedded local one."""

from __future__ import annotations

from dataclasses import dataclass

from mvrec_dist.config.fields import Problems, setting

__all__ = ["RayConfig"]


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Connection to Ray; with no address (and no RAY_ADDRESS) an embedded loopback-only cluster starts."""

    address: str | None = setting(None, doc="Ray cluster address ('auto', 'ray://host:10001'); null starts a local one.")
    num_cpus: int = setting(0, doc="CPUs of the embedded local cluster; 0 uses every core of this machine.")
    object_store_gb: float = setting(0.0, doc="Object-store size of the local cluster in GiB; 0 lets Ray choose.")
    dashboard: bool = setting(True, doc="Start the dashboard of the local cluster (bound to 127.0.0.1 only; Ray Train's state queries use it).")
    verbose: bool = setting(False, doc="Show every library's output on the console as Ray streams it (--verbose); "
                                       "false: the project's lines and bars only, the rest in the run's logs/.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.num_cpus >= 0, "num_cpus", f"must be >= 0, got {self.num_cpus}")
        p.check(self.object_store_gb >= 0, "object_store_gb", f"must be >= 0, got {self.object_store_gb}")
        p.raise_if_any()
