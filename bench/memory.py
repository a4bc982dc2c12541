"""Resident memory of this process, for the scale benchmarks (Linux /proc; NaN or False elsewhere)."""
import resource
from pathlib import Path

GB = 1e9


def rss_gb(field: str = "VmRSS") -> float:
    """Resident memory of this process: VmRSS now, or VmHWM, the peak since the last reset_peak()."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GB
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def process_peak_gb() -> float:
    """Peak RSS of the process so far (ru_maxrss is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
