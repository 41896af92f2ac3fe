"""Markdown table of bench/results/review_sim*.json (the README's simulator table)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def markdown(path: str | Path) -> str:
    d = json.loads(Path(path).read_text())
    out = ["| noise | order | wrong labels found in the first 250 / 500 / 1,000 cards | one-key rate at 1,000 "
           "(best single source on the same errors) | estimated (model; DEFT flags) / true remaining at 1,000 |",
           "|---|---|---|---|---|"]
    for r in d["results"]:
        b = {x["budget"]: x for x in r["budgets"]}
        last = b[max(b)]
        src = last.get("source_one_key_rate", {})
        best = max((v for k, v in src.items() if not k.startswith("combined")), default=None)
        est = "-" if last["estimated_remaining"] is None else f"{last['estimated_remaining']:.0f}"
        if last.get("estimated_remaining_flagged") is not None:
            est += f" ({last['estimated_remaining_model']:.0f}; {last['estimated_remaining_flagged']})"
        order = r["order"] + (" + learning" if r["learn"] else "")
        out.append(f"| {r['noise']} | {order} | {' / '.join(str(b[k]['errors_found']) for k in sorted(b))} | "
                   f"{last['one_key_rate']:.1%}" + (f" ({best:.1%})" if best is not None else "")
                   + f" | {est} / {last['true_remaining']} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(sys.argv[1] if len(sys.argv) > 1 else "bench/results/review_sim.json"))
