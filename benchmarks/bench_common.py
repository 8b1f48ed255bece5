"""What every benchmark shares: the machine it ran on, and its rows as the Markdown table of benchmarks/README.md.
Each row is a ratio against a peer measured in the same run."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

README = Path(__file__).with_name("README.md")


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}, "
            f"Python {platform.python_version()}")


def render(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| benchmark | ours | peer | ratio | ratio is | target | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| {r['row']} | {r['ours']} | {r['peer']} | **{r['ratio']:.2f}x**{note} | {r['measure']} | "
                     f"{r['target']} | {'yes' if r['ok'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def publish(rows: list[dict[str, Any]], script: str, *, record: bool = True) -> None:
    """Print one script's rows under a dated header naming the machine; append them to benchmarks/README.md."""
    text = render(rows, f"### {dt.datetime.now():%Y-%m-%d %H:%M} — `benchmarks/{script}`\n\nMachine: {machine()}.")
    print(text)
    if record:
        with README.open("a") as f:
            f.write("\n" + text)
