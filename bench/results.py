"""Where benchmark numbers go: the machine they were measured on, and their own section of docs/performance.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def machine() -> str:
    """"x86_64, <CPU model>, 2 cores, Python 3.11.7": numbers mean nothing without it."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(heading: str, text: str, path: Path = DOC) -> None:
    """Replace (or append) the `## <heading>` section, leaving every other benchmark's section alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = path.read_text() if path.exists() else "# Performance\n\nNumbers from the scripts in `bench/`.\n"
    section = f"## {heading}\n\n{text.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: section + "\n", doc, count=1).rstrip() + "\n"
    else:
        doc = doc.rstrip() + "\n\n" + section
    path.write_text(doc)
