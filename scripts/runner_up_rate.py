"""How often the draft's runner-up is the target's token when its top choice is not (teacher-forced).

Overlap pre-drafts, for each position where the target may reject, a branch rooted at the draft's
runner-up; its hit rate is alpha's complement times this rate. The replay proposer uses the measured rate
(`--replay-runner-up`) so GPU systems benchmarks on random weights model real drafts, not a guess.

Reads the prompts and target-only greedy outputs of a `specdec bench --json` file and runs one forward of
each model over prompt + output: no generation, a minute on CPU.
"""

from __future__ import annotations

import argparse
import json

import torch

from specdec.core.pair import ModelPair, PairConfig
from specdec.tools.bench import humaneval_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", help="a specdec bench --json file with a target-only mode")
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--draft-dtype", default="auto")
    parser.add_argument("--num-prompts", type=int, default=20)
    args = parser.parse_args()
    data = json.load(open(args.bench_json))
    outputs = next(m for m in data["modes"] if m["mode"] == "target-only")["token_ids"]
    chat = bool(data["config"].get("chat"))
    rows = humaneval_rows() if data["config"].get("prompts") is None else [
        json.loads(line) for line in open(data["config"]["prompts"]) if line.strip()]
    engine = ModelPair.load(PairConfig(target=args.target, draft=args.draft, draft_dtype=args.draft_dtype,
                                       max_len=2048))
    top1 = top2 = positions = 0
    for row, output in list(zip(rows, outputs))[:args.num_prompts]:
        ids = engine.encode(row["prompt"] if "prompt" in row else row["turns"][0], chat=chat) + output
        with torch.inference_mode():
            t = engine.target_runner.model(torch.tensor([ids])).logits[0, len(ids) - len(output) - 1:-1].argmax(-1)
            d = engine.draft_runner.model(torch.tensor([ids])).logits[0, len(ids) - len(output) - 1:-1].topk(2).indices
        assert t.tolist() == output, "target forward disagrees with the recorded greedy output"
        hit1 = d[:, 0] == t
        top1 += int(hit1.sum())
        top2 += int(((d[:, 1] == t) & ~hit1).sum())
        positions += len(output)
    alpha = top1 / positions
    print(json.dumps({"positions": positions, "alpha_top1": alpha,
                      "runner_up_given_miss": top2 / max(1, positions - top1)}, indent=1))


if __name__ == "__main__":
    main()
