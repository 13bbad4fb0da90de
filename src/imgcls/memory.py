"""How much memory this machine can give: a size option too large for it is refused at once in one line, rather
than ending in the out-of-memory killer or deep inside torch."""

from __future__ import annotations

import os

from imgcls.errors import UserError


def available_memory() -> int | None:
    """Bytes the system can give without swapping (Linux's MemAvailable), else its physical memory; None where
    neither is known (then the allocation itself decides)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_memory(needed: int, what: str, fix: str) -> None:
    """UserError '<what> would need about N GB of memory, more than the M GB available; <fix>'."""
    available = available_memory()
    if available is not None and needed > available:
        raise UserError(f"{what} would need about {_gigabytes(needed)} of memory, more than the "
                        f"{_gigabytes(available)} available; {fix}")


def _gigabytes(count: int) -> str:
    if count >= 10 ** 15:  # an int of any size: dividing one past 1e308 would overflow
        return "over a million GB"
    gb = count / 1e9
    return f"{gb:,.0f} GB" if gb >= 10 else f"{gb:.1f} GB"
