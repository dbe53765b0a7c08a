"""What this CPU can do fast, read at run time from ``/proc/cpuinfo`` (machines of one kind
differ: Intel with AMX one day, AMD with or without AVX512-BF16 the next), and whether the node
has a GPU device at all. Callers pass another file (or folder) to test every answer."""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
DEV = Path("/dev")
# Device nodes of the GPUs TensorFlow can use: NVIDIA (CUDA), AMD (ROCm's kfd), WSL's GPU bridge
GPU_DEVICE_PATTERNS = ("nvidia[0-9]*", "kfd", "dxg")

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


def gpu_device_present(dev: Path | None = None) -> bool:
    """True where ``dev`` (default ``/dev``) holds a GPU's device node (``GPU_DEVICE_PATTERNS``).
    Without one no TensorFlow build sees a GPU, so a CPU-only node can decide its engine without
    importing TensorFlow; with one, only TensorFlow knows whether it can use it (ask it)."""
    folder = DEV if dev is None else dev
    return any(next(folder.glob(pattern), None) is not None for pattern in GPU_DEVICE_PATTERNS)
