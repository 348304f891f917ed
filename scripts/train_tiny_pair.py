#!/usr/bin/env python3
"""Train the built-in `tiny` draft/target pair on the Python standard library's own source.

Why: tests and `make demo` need a model pair that runs on a laptop CPU in milliseconds, needs no
download, prints recognisable text and whose draft agrees with its target about as often as a real
pair does. Random weights give none of that; a few CPU minutes of training on a corpus that ships with
Python give all of it.

What it does (seeded; rerunning on the same Python version gives the same corpus and, with the same
thread count, the same weights):
  1. corpus  = the top-level `*.py` files of the running interpreter's standard library, sorted by name;
  2. tokenizer = byte-level BPE (vocab 2048) trained on that corpus with `tokenizers`;
  3. target  = Llama, 4 layers, hidden 192, trained with next-token cross-entropy;
  4. draft   = Llama, 2 layers, hidden 128, distilled from the target (KL to its softmax) plus CE.
Both are written as fp16 safetensors with the tokenizer into specdec/assets/tiny/{target,draft}.

    python scripts/train_tiny_pair.py [--steps 400] [--draft-steps 300] [--out specdec/assets/tiny]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sysconfig
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEED = 1234
VOCAB_SIZE = 2048
EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)
TARGET_SHAPE = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                    intermediate_size=512)
DRAFT_SHAPE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=320)


def read_corpus() -> list[str]:
    lib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(lib.glob("*.py"))]


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   model_max_length=1024)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_config(shape: dict, eos_id: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=1024, tie_word_embeddings=True,
                       bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, rope_theta=10000.0,
                       **shape)


def batches(data: torch.Tensor, seq_len: int, batch: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch,), generator=gen)
        chunk = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])
        yield chunk[:, :-1], chunk[:, 1:]


def cosine_lr(step: int, total: int, peak: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train(model, steps: int, data, lr: float, teacher=None, seq_len=128, batch=32, label="model"):
    gen = torch.Generator().manual_seed(SEED + steps)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    t0 = time.time()
    for step, (x, y) in zip(range(steps), batches(data, seq_len, batch, gen)):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        if teacher is not None:
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(input_ids=x).logits, dim=-1)
            kl = F.kl_div(F.log_softmax(logits, dim=-1), t_logp, log_target=True, reduction="batchmean") / seq_len
            loss = 0.3 * loss + 0.7 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"[{label}] step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()


def save(model, tokenizer, out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1200, help="target training steps (4096 tokens each)")
    ap.add_argument("--draft-steps", type=int, default=600, help="draft distillation steps")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("specdec/assets/tiny"))
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(2)

    texts = read_corpus()
    tokenizer = train_tokenizer(texts)
    ids = tokenizer(f"\n{EOS}\n".join(texts))["input_ids"]
    data = torch.tensor(ids, dtype=torch.long)
    print(f"corpus: {len(texts)} files, {sum(map(len, texts)) / 1e6:.1f}M chars, {data.numel() / 1e6:.2f}M tokens")

    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    target = LlamaForCausalLM(make_config(TARGET_SHAPE, eos_id))
    train(target, args.steps, data, lr=3e-3, label="target")
    draft = LlamaForCausalLM(make_config(DRAFT_SHAPE, eos_id))
    train(draft, args.draft_steps, data, lr=3e-3, teacher=target, label="draft")

    save(target, tokenizer, args.out / "target")
    save(draft, tokenizer, args.out / "draft")
    (args.out / "TRAINING.json").write_text(json.dumps({
        "seed": SEED, "steps": args.steps, "draft_steps": args.draft_steps,
        "corpus": f"top-level *.py of the Python {'.'.join(map(str, __import__('sys').version_info[:3]))} stdlib",
        "tokens": data.numel()}, indent=2) + "\n")
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
