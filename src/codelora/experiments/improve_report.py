"""The report of `codelora improve`: a table of pass@1 per round (base, start, each round) and a
chart of it, from report.json's rows."""

from __future__ import annotations

from pathlib import Path

from codelora.io.figures import pyplot, save_figure


def render_markdown(report: dict) -> str:
    cfg = report["config"]
    suites = list(report["heldout"])
    k, temperature = cfg["samples"], cfg["generate"]["temperature"]
    head = ("| round | model | " + " | ".join(f"{s} pass@1 (95% CI)" for s in suites)
            + f" | train tasks pass@1 (T={temperature}) | train tasks pass@{k} | passing pairs | "
              f"original rows | sampling s | execution s | training s |")
    lines = [f"# codelora improve: {report['train_tasks']} training tasks, {cfg['rounds']} round(s)", "",
             f"Start: {report['start'] or 'the base model'}. Held-out suites (greedy pass@1, "
             f"{cfg['eval']['precision']}): " + ", ".join(f"{s} ({n} tasks)" for s, n in report["heldout"].items())
             + f". Each round samples {k} answers per training task at temperature {temperature}, keeps at "
             f"most {cfg['keep_per_task']} passing answers per task ({cfg['select']} first) and trains on them with "
             f"an original-data share of {cfg['original_share']}.", "",
             head, "| --- | --- |" + " ---: |" * (len(suites) + 7)]
    for row in report["rows"]:
        cells = []
        for s in suites:
            m = row["heldout"].get(s)
            cells.append(f"{m['pass@1']:.3f} ({m['ci95'][0]:.2f}-{m['ci95'][1]:.2f})" if m else "-")
        sampled = row.get("train_tasks_sampled") or {}
        cells += [f"{sampled['pass@1']:.3f}" if sampled else "-", f"{sampled[f'pass@{k}']:.3f}" if sampled else "-"]
        cells += [str(row.get(key, "-")) for key in ("pairs", "original_rows")]
        cells += [f"{row[key]:.0f}" if key in row else "-" for key in ("sampling_seconds", "execution_seconds",
                                                                      "train_seconds")]
        lines.append(f"| {row['round']} | {row['model']} | " + " | ".join(cells) + " |")
    lines += ["", "Train-task pass@1 / pass@k of a model come from the answers it sampled for the next round "
                  "(or the final sampling); the seconds of a round are those of producing its model.", ""]
    return "\n".join(lines)


def plot_rounds(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    models = [r for r in report["rows"] if r["model"] != "base"]
    xs = [r["round"] for r in models]
    base = next((r for r in report["rows"] if r["model"] == "base"), None)
    for i, suite in enumerate(report["heldout"]):
        color = f"C{i}"
        ys = [r["heldout"].get(suite, {}).get("pass@1") for r in models]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=color, label=f"{suite}")
        if base and suite in base["heldout"]:
            ax.axhline(base["heldout"][suite]["pass@1"], color=color, linestyle="--", linewidth=1,
                       label=f"{suite}: base")
    sampled = [(r["round"], r["train_tasks_sampled"]["pass@1"]) for r in models if r.get("train_tasks_sampled")]
    if sampled:
        ax.plot(*zip(*sampled), marker="s", color="gray", label="train tasks (sampled)")
    ax.set_xlabel("round (0 = start)")
    ax.set_ylabel("pass@1")
    ax.set_xticks(sorted(set(xs)) or [0])
    ax.set_ylim(0, max(0.3, min(1.0, ax.get_ylim()[1])))
    ax.set_title("codelora improve: pass@1 per round")
    ax.legend(fontsize=8)
    save_figure(fig, path)
