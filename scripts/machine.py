"""What a benchmark names as the machine it ran on: the name `hpmkd bench` records too."""

from hpmkd.deploy.latency import cpu_name

__all__ = ["cpu_name"]
