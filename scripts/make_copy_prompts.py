#!/usr/bin/env python3
"""Write a copy-heavy prompt set for `specdec bench --prompts ... --chat`: "add type hints" over
HumanEval's reference solutions. The answer repeats most of its input, which is where prompt lookup
(the n-gram proposer) wins. Usage: python scripts/make_copy_prompts.py OUT.jsonl [--num 20]"""

from __future__ import annotations

import argparse
import json
import pathlib

from specdec.tools.bench import humaneval_rows

INSTRUCTION = ("Rewrite this Python function with type hints on every parameter and return value. "
               "Keep the docstring and the code otherwise unchanged, and reply with only the complete "
               "rewritten function in one code block.\n\n```python\n{code}```\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="JSONL to write (one {\"turns\": [...]} per line)")
    ap.add_argument("--num", type=int, default=20, help="how many HumanEval problems, from the first (default 20)")
    args = ap.parse_args()
    rows = humaneval_rows()[:args.num]
    lines = [json.dumps({"turns": [INSTRUCTION.format(code=r["prompt"] + r["canonical_solution"])],
                         "task_id": r["task_id"]}) for r in rows]
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} prompts to {args.out}")


if __name__ == "__main__":
    main()
