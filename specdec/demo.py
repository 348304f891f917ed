"""`make demo`: start the three services on loopback with the built-in tiny pair (`specdec up`), send
requests through the orchestrator, stream the text, print acceptance statistics, shut down."""

from __future__ import annotations

import sys

from specdec.client import Client, build_request
from specdec.config import SamplingParams
from specdec.launcher import Stack, free_base_port

PROMPTS = [
    ("greedy, K=4", "def __init__(self, name, value=None):\n", SamplingParams()),
    ("greedy, K=4", "import os\nimport sys\n\n\ndef main(argv):\n", SamplingParams()),
    ("sampling T=0.7 top-p 0.9 seed 7", "class Config:\n", SamplingParams(temperature=0.7, top_p=0.9, seed=7)),
]


def main() -> int:
    quiet = ["--log-level", "warning"]
    stack = Stack(port=free_base_port(preferred=50051),
                  extra={"orchestrator": ["--k", "4", *quiet], "target": quiet, "draft": quiet})
    print(f"starting draft, target and orchestrator (tiny pair) with `specdec up` on {stack.address} ...", flush=True)
    stack.start()
    try:
        with Client(stack.address, timeout_s=120) as client:
            for label, prompt, sampling in PROMPTS:
                print(f"\n=== {label} ===\n{prompt}", end="", flush=True)
                result = client.generate(build_request(prompt, sampling=sampling, max_new_tokens=96),
                                         on_text=lambda t: print(t, end="", flush=True))
                s = result.to_dict()["stats"]
                lat = s["latency_ms"]
                print(f"\n--- {len(result.token_ids)} tokens, {s['tokens_per_second']:.0f} tok/s | drafts "
                      f"{s['drafts']}, draft tokens {s['draft_tokens']}, accepted {s['accepted_tokens']}, "
                      f"mean acceptance length {s['mean_acceptance_length']:.2f}, accepted per position "
                      f"{s['accepted_per_position']}, overlap hits {s['overlap_hits']}/{s['drafts']} | "
                      f"TTFT {lat.get('time_to_first_token_ms', 0):.1f} ms, draft {lat.get('draft_ms', 0):.0f} ms, "
                      f"verify {lat.get('verify_ms', 0):.0f} ms")
    finally:
        stack.stop()
        print("\nservices stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
