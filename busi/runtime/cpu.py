"""What this CPU can do fast, read at run time from ``/proc/cpuinfo`` (machines of one kind
differ: Intel with AMX one day, AMD with or without AVX512-BF16 the next). Callers pass another
file (or its text) to test every answer."""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # fast bfloat16 matmuls
INT8_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})  # integer dot-product units (VNNI / AMX)


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU listed (empty where the file cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16, where bfloat16 matmuls are fast."""
    return bool(cpu_flags(cpuinfo) & BF16_FLAGS)
