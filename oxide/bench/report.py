"""The comparison's outputs: ``bench.json`` (every raw figure and the machine), ``bench.md`` (a table per
model, with ratios against llama.cpp from the same run) and ``bench.png`` (a bar chart)."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from .harness import SPEED_FIGURES

DISTRIBUTIONS = ("oxide", "torch", "transformers", "llama-cpp-python", "numpy")
FIGURE_LABELS = {"load_s": "load s", "prefill_tok_s": "prefill tok/s", "decode_tok_s": "decode tok/s",
                 "peak_rss_mb": "peak RSS MB"}


def _cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` where there is one, else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, core counts, memory, OS, Python and the versions of the engines."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable, "threads": threads,
            "memory_gib": round(memory / 2**30, 1) if memory else None, "platform": platform.platform(),
            "python": platform.python_version(), "versions": {d: _version(d) for d in DISTRIBUTIONS}}


def _number(value: float) -> str:
    """Three significant figures at most, no exponent for ordinary sizes."""
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _cell(summary: dict[str, float], baseline: dict[str, float], key: str) -> str:
    """A figure with its ratio to the baseline engine's, e.g. ``452 (0.99x)``."""
    if key not in summary:
        return "-"
    if key not in baseline or not baseline[key]:
        return _number(summary[key])
    return f"{_number(summary[key])} ({summary[key] / baseline[key]:.2f}x)"


def _quality_cells(quality: dict[str, Any]) -> list[str]:
    """KL, top-1 agreement and perplexity, or dashes where they were not measured."""
    kl = f"{quality['kl_mean']:.2e}" if "kl_mean" in quality else "-"
    top1 = f"{100 * quality['top1_agreement']:.1f}%" if "top1_agreement" in quality else "-"
    ppl = f"{quality['perplexity']:.3f}" if "perplexity" in quality else "-"
    return [kl, top1, ppl]


def markdown(report: dict[str, Any]) -> str:
    """One table per model: medians over the repeats, ratios against the baseline engine in the same run."""
    machine, settings = report["machine"], report["settings"]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items() if version)
    lines = [
        "# oxide bench --compare", "",
        f"- **Machine:** {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['memory_gib']} GiB; "
        f"{machine['platform']}, Python {machine['python']}",
        f"- **Versions:** {versions}",
        f"- **Settings:** threads {settings['threads']}, repeats {settings['repeats']} (medians shown), "
        f"prompt {settings['prompt_tokens']} tokens, decode {settings['gen_tokens']} tokens (greedy, end tokens "
        f"ignored), quality on {settings['quality_tokens']} tokens of the benchmark text",
        f"- **Ratios** are against {report['baseline_engine']} in the same run; KL divergence (mean over positions, "
        f"nats) and top-1 agreement are against the float32 logits of {report['reference_engine']}; "
        f"run {report['started']}.",
    ]
    header = [FIGURE_LABELS[key] for key in SPEED_FIGURES] + ["KL vs f32", "top-1 vs f32", "perplexity"]
    for model in report["models"]:
        engines = model["engines"]
        baseline = engines.get(report["baseline_engine"], {}).get("summary", {})
        lines += ["", f"## {model['name']}", "", "| engine | " + " | ".join(header) + " |",
                  "|---" * (len(header) + 1) + "|"]
        notes = []
        for name, result in engines.items():
            if result["status"] == "skipped":
                notes.append(f"- {name}: skipped ({result['reason']})")
                continue
            if result["status"] == "failed":
                notes.append(f"- {name}: failed: {result['reason']}")
            if "error" in result["quality"]:
                notes.append(f"- {name}: quality run failed: {result['quality']['error']}")
            cells = [_cell(result["summary"], baseline, key) for key in SPEED_FIGURES]
            cells += _quality_cells(result["quality"])
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [""] + notes if notes else []
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    """Bar charts of the four speed figures, one bar per engine and model (medians over the repeats)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(report["settings"]["engines"])
    models = report["models"]
    width = 0.8 / len(engines)
    fig, axes = plt.subplots(1, len(SPEED_FIGURES), figsize=(4 * len(SPEED_FIGURES), 3.6))
    for ax, key in zip(axes, SPEED_FIGURES):
        for i, engine in enumerate(engines):
            values = [m["engines"][engine]["summary"].get(key, 0.0) for m in models]
            ax.bar([x + i * width for x in range(len(models))], values, width, label=engine)
        ax.set_title(FIGURE_LABELS[key])
        ax.set_xticks([x + width * (len(engines) - 1) / 2 for x in range(len(models))],
                      [m["name"] for m in models], fontsize=7)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"oxide bench --compare, threads {report['settings']['threads']} ({report['machine']['cpu']})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and (when matplotlib is installed) ``bench.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / "bench.json", "markdown": out / "bench.md"}
    written["json"].write_text(json.dumps(report, indent=2) + "\n")
    written["markdown"].write_text(markdown(report))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return written
    written["png"] = out / "bench.png"
    chart(report, written["png"])
    return written
