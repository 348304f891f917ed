"""`make demo`: the three services on loopback with the built-in tiny pair (`specdec up`), and the same
prompts through them target-only and with speculation, side by side: tokens/s, the speedup, and whether
the outputs are identical (greedy decoding: they must be).

The draft runs the hybrid proposer: per cycle prompt lookup, the tiny draft model or neither, whichever
should commit the most tokens per second. The prompts are code whose continuation repeats what came
before, where lookup drafts long runs for free; the summary says plainly where speculation did not pay.
"""

from __future__ import annotations

import sys
import time

from specdec.core.config import ProposerKind
from specdec.serving.client import Client, ClientResult, build_request
from specdec.tools.launcher import Stack, free_base_port

PROMPTS = [
    "def __init__(self, name, value=None):\n",
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Config:\n    def __init__(self):\n        self.name = None\n        self.path = None\n",
]
MAX_NEW_TOKENS = 96


def timed(client: Client, prompt: str, k: int | None) -> tuple[ClientResult, float]:
    """One request through the orchestrator (k = 0: target only); its tokens/s as the client saw them."""
    t0 = time.perf_counter()
    result = client.generate(build_request(prompt, max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True, k=k))
    return result, len(result.token_ids) / (time.perf_counter() - t0)


def main() -> int:
    quiet = ["--log-level", "warning"]
    stack = Stack(port=free_base_port(preferred=50051),
                  extra={"orchestrator": ["--k", "8", *quiet], "target": quiet,
                         "draft": ["--proposer", ProposerKind.HYBRID.value, *quiet]})
    print(f"starting draft (hybrid proposer), target and orchestrator (tiny pair) with `specdec up` on "
          f"{stack.address} ...", flush=True)
    stack.start()
    rows = []
    try:
        with Client(stack.address, timeout_s=120) as client:
            timed(client, "x = 1", None)  # warm up both paths once
            for prompt in PROMPTS:
                plain, plain_tps = timed(client, prompt, 0)
                spec, spec_tps = timed(client, prompt, None)
                s = spec.stats
                print(f"\n=== {prompt.splitlines()[0]!r} ===\n{prompt}{spec.text}")
                print(f"--- target-only {plain_tps:6.1f} tok/s | speculative {spec_tps:6.1f} tok/s "
                      f"({spec_tps / plain_tps:.2f}x) | outputs identical: "
                      f"{'yes' if spec.token_ids == plain.token_ids else 'NO'} | drafts {s.drafts}, accepted "
                      f"{s.accepted_tokens} of {s.draft_tokens} ({s.accepted_tokens_by_source or 'none'}), "
                      f"mean acceptance length {s.mean_acceptance_length:.2f}")
                rows.append((plain_tps, spec_tps, spec.token_ids == plain.token_ids))
    finally:
        stack.stop()
        print("\nservices stopped.")
    speedups = [s / p for p, s, _ in rows]
    identical = all(same for _, _, same in rows)
    print(f"\nsummary: speculation {min(speedups):.2f}x-{max(speedups):.2f}x target-only on these prompts; "
          f"outputs identical: {'yes' if identical else 'NO'}.")
    slower = [PROMPTS[i].splitlines()[0] for i, x in enumerate(speedups) if x < 1.0]
    if slower:
        print(f"speculation did not pay on: {slower} (adaptive K stops drafting where it does not, after measuring)")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
