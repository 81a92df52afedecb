"""Command line: ``oxide run [MODEL] [--image PATH ...] PROMPT``, ``oxide chat [MODEL]``, ``oxide serve [MODEL]``,
``oxide info [MODEL]`` and ``oxide bench [MODEL]`` (also ``python -m oxide``)."""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from collections.abc import Sequence

from .errors import OxideError


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: CUDA, then MPS, then CPU; $OXIDE_DEVICE)")
    p.add_argument("--dtype", help="f32, f16 or bf16 (default: by device; $OXIDE_DTYPE)")
    p.add_argument("--n-ctx", type=int, help="context size in tokens (default: the model's, up to 8192)")


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    """Sampling flags (llama.cpp's names and defaults), stop strings and the token budget."""
    p.add_argument("-n", "--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", "--temp", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--seed", type=int)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--stats", action="store_true", help="print token counts and speeds to stderr")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oxide", description="Run local LLMs (GGUF and Hugging Face models).")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="generate a completion, streamed to stdout")
    run.add_argument("args", nargs="+", metavar="[MODEL] PROMPT",
                     help="a model (optional: default Gemma 3 270M) and the prompt")
    run.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    run.add_argument("--system", help="system message (implies --chat)")
    run.add_argument("--image", action="append", default=[], metavar="PATH",
                     help="an image for a model that sees (repeatable; Pixtral-Llava folders); each goes where the "
                          "prompt has an [IMG] placeholder, else before the prompt")
    _add_generation_options(run)
    _add_model_options(run)

    chat = commands.add_parser("chat", help="an interactive conversation on stdin/stdout (/exit or EOF ends it)")
    chat.add_argument("model", nargs="?", help="a model (default: Gemma 3 270M)")
    chat.add_argument("--system", help="system message")
    _add_generation_options(chat)
    _add_model_options(chat)

    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching and a chat "
                                              "page at / (needs the server extra)")
    serve.add_argument("model", nargs="?", help="a model (default: Gemma 3 270M)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="a key every request must bring as 'Authorization: Bearer KEY' "
                                         "(default: $OXIDE_API_KEY, else none)")
    serve.add_argument("-np", "--parallel", type=int, default=4,
                       help="KV slots: sequences decoded together in one batch (default 4)")
    serve.add_argument("--queue", type=int, default=64,
                       help="requests that may wait for a slot; past them a request gets 503 (default 64)")
    serve.add_argument("--alias", help="the model's name in /v1/models and responses (default: its file name)")
    _add_model_options(serve)

    info = commands.add_parser("info", help="describe a model: architecture, config, tensors, decisions")
    info.add_argument("model", nargs="?", help="a .gguf path (default: Gemma 3 270M)")
    _add_model_options(info)

    bench = commands.add_parser("bench", help="prefill and decode speed of a model on synthetic tokens; with "
                                              "--compare, oxide beside llama.cpp and transformers")
    bench.add_argument("model", nargs="?", help="a model (default: Gemma 3 270M)")
    bench.add_argument("-p", "--prompt-tokens", type=int, help="prompt length (default 256; 512 with --compare)")
    bench.add_argument("-n", "--gen-tokens", type=int, help="generated tokens (default 64; 128 with --compare)")
    bench.add_argument("-r", "--repeat", "--repeats", dest="repeat", type=int, default=3)
    bench.add_argument("--threads", type=int, help="CPU threads (default: torch's; 2 with --compare)")
    _add_model_options(bench)
    compare = bench.add_argument_group("comparison (--compare)")
    compare.add_argument("--compare", action="store_true",
                         help="run each engine in fresh processes and write bench.json, bench.md and bench.png")
    compare.add_argument("--models", nargs="+", metavar="MODEL", help=".gguf files or Hugging Face folders")
    compare.add_argument("--engines", help="comma-separated (default: oxide,llama.cpp,transformers)")
    compare.add_argument("--quality-tokens", type=int,
                         help="positions scored for KL, top-1 and perplexity (default 256)")
    compare.add_argument("--out", help="output folder (default: oxide-bench)")
    return parser


def _load(model: str | None, ns: argparse.Namespace, parallel: int = 1):
    import oxide

    return oxide.load(model, device=ns.device, dtype=ns.dtype, n_ctx=ns.n_ctx, parallel=parallel)


def _serve(ns: argparse.Namespace) -> int:
    import os

    from .server import check_options, require_server_extra, serve

    key = ns.api_key if ns.api_key is not None else os.environ.get("OXIDE_API_KEY")
    require_server_extra()   # before the model loads
    check_options(ns.port, ns.queue, key)
    model = _load(ns.model, ns, parallel=ns.parallel)
    serve(model, host=ns.host, port=ns.port, api_key=key, max_waiting=ns.queue, model_name=ns.alias)
    return 0


def _sampling(ns: argparse.Namespace):
    from .sampling import SamplingOptions

    return SamplingOptions(
        temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p, min_p=ns.min_p, seed=ns.seed,
        repeat_penalty=ns.repeat_penalty, repeat_last_n=ns.repeat_last_n,
        presence_penalty=ns.presence_penalty, frequency_penalty=ns.frequency_penalty)


def _stream(model, request, ns: argparse.Namespace, images: Sequence[str] = ()) -> str:
    """Stream one completion to stdout; return its text."""
    generation = model.stream(request, max_new_tokens=ns.max_new_tokens, sampling=_sampling(ns), stop=ns.stop,
                              ignore_eos=ns.ignore_eos, images=list(images))
    for piece in generation:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    done = generation.completion
    if ns.stats and done is not None:
        s = done.stats
        print(f"prompt: {s.prompt_tokens} tokens ({s.cached_tokens} cached), "
              f"{s.prefill_tokens_per_second:.1f} tok/s; "
              f"generated: {s.completion_tokens} tokens, {s.decode_tokens_per_second:.1f} tok/s; "
              f"finish: {done.finish_reason}", file=sys.stderr)
    return done.text if done is not None else ""


def _run(ns: argparse.Namespace) -> int:
    from .errors import InvalidOptionError

    if len(ns.args) > 2:
        raise InvalidOptionError("run takes [MODEL] PROMPT; quote a prompt that has spaces")
    model_path, prompt = (None, ns.args[0]) if len(ns.args) == 1 else ns.args
    _sampling(ns)   # bad flags fail before the model loads
    model = _load(model_path, ns)
    request = prompt
    if ns.chat or ns.system:
        content = [*({"type": "image"} for _ in ns.image), {"type": "text", "text": prompt}] if ns.image else prompt
        system = [{"role": "system", "content": ns.system}] if ns.system else []
        request = [*system, {"role": "user", "content": content}]
    _stream(model, request, ns, ns.image)
    return 0


def _chat(ns: argparse.Namespace) -> int:
    """Read user turns line by line; each reply is streamed and kept in the conversation. A turn that
    fails (say the conversation outgrew the context) is reported and dropped; the session goes on."""
    _sampling(ns)
    model = _load(ns.model, ns)
    messages = [{"role": "system", "content": ns.system}] if ns.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        try:
            reply = _stream(model, messages, ns)
        except OxideError as e:
            messages.pop()
            print(f"oxide: error: {e}", file=sys.stderr)
            continue
        messages.append({"role": "assistant", "content": reply})


_COMPARE_ONLY = ("models", "engines", "quality_tokens", "out")


def _bench(ns: argparse.Namespace) -> int:
    """Best of ``--repeat`` runs: prefill of ``--prompt-tokens`` random ids, then ``--gen-tokens`` greedy steps.

    With ``--compare``, the engine comparison of :mod:`oxide.bench` instead."""
    import random

    from .errors import InvalidOptionError
    from .sampling import SamplingOptions

    if ns.compare:
        return _bench_compare(ns)
    given = [f"--{name.replace('_', '-')}" for name in _COMPARE_ONLY if getattr(ns, name) is not None]
    if given:
        raise InvalidOptionError(f"{', '.join(given)} only apply with --compare")
    prompt_tokens = 256 if ns.prompt_tokens is None else ns.prompt_tokens
    gen_tokens = 64 if ns.gen_tokens is None else ns.gen_tokens
    if prompt_tokens < 1 or gen_tokens < 2 or ns.repeat < 1 or (ns.threads is not None and ns.threads < 1):
        raise InvalidOptionError("bench needs --prompt-tokens >= 1, --gen-tokens >= 2, --repeat >= 1 "
                                 "and --threads >= 1")
    if ns.threads is not None:
        import torch

        torch.set_num_threads(ns.threads)
    model = _load(ns.model, ns)
    rng = random.Random(0)
    tokenizer = model.tokenizer
    special = set(tokenizer.special_tokens.values()) if tokenizer is not None else set()
    vocab = min(tokenizer.vocab_size, model.config.vocab_size) if tokenizer is not None else model.config.vocab_size
    ordinary = [i for i in range(vocab) if i not in special]
    prompt = [rng.choice(ordinary) for _ in range(prompt_tokens)]
    model.generate(prompt[:8], max_new_tokens=2, sampling=SamplingOptions.greedy())   # warm-up: page faults, the reference's dequantization
    runs = [model.generate(prompt, max_new_tokens=gen_tokens, sampling=SamplingOptions.greedy(),
                           ignore_eos=True).stats for _ in range(ns.repeat)]
    prefill = max(r.prefill_tokens_per_second for r in runs)
    decode = max(r.decode_tokens_per_second for r in runs)
    print(f"model:   {model.info.source.path}")
    print(f"device:  {model.device}, {model.dtype}, {_threads()} threads")
    print(f"prefill: {prefill:.1f} tok/s ({prompt_tokens} tokens)")
    print(f"decode:  {decode:.1f} tok/s ({gen_tokens} tokens)")
    return 0


def _bench_compare(ns: argparse.Namespace) -> int:
    """``bench --compare``: every engine on every model in fresh processes; the table goes to stdout."""
    from pathlib import Path

    from .bench.harness import CompareSettings, compare
    from .bench.report import markdown, write_report
    from .errors import InvalidOptionError
    from .sources import resolve_source

    if ns.model is not None and ns.models is not None:
        raise InvalidOptionError("give the models either as MODEL or with --models, not both")
    if ns.device not in (None, "cpu") or ns.dtype not in (None, "f32"):
        raise InvalidOptionError("bench --compare measures the CPU in float32; drop --device and --dtype")
    engines = tuple(e.strip() for e in ns.engines.split(",") if e.strip()) if ns.engines is not None else None
    flags = {"engines": engines, "threads": ns.threads, "repeats": ns.repeat, "prompt_tokens": ns.prompt_tokens,
             "gen_tokens": ns.gen_tokens, "quality_tokens": ns.quality_tokens}
    settings = CompareSettings(models=tuple(resolve_source(m).path for m in ns.models or [ns.model]),
                               **{key: value for key, value in flags.items() if value is not None})  # else defaults
    report = compare(settings)
    written = write_report(report, Path(ns.out or "oxide-bench"))
    print(markdown(report))
    if "png" not in written:
        print("oxide bench: no chart: matplotlib is not installed (pip install 'oxide[bench]')", file=sys.stderr)
    print(f"oxide bench: wrote {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _info(ns: argparse.Namespace) -> int:
    """Describe a model from its metadata alone (no weights are read)."""
    from .device import device_reason, select_device
    from .log import format_bytes
    from .precision import choose_precision
    from .sources import resolve_source

    source = resolve_source(ns.model)
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    print(f"source:        {source.path}")
    if source.kind == "gguf":
        config = _describe_gguf(source.path, counts, sizes)
    else:
        config = _describe_hf(source.path, counts, sizes)
    device = select_device(ns.device)
    policy = choose_precision(device, ns.dtype)
    print(f"device:        {device} ({device_reason(device, ns.device)})")
    print(f"compute dtype: {policy.compute_dtype} ({policy.compute_reason})")
    print(f"kv cache:      {policy.kv_cache_dtype} ({policy.kv_cache_reason})")
    print(f"kernels:       {_kernels(device)}")
    print("config:")
    for key, value in config.summary().items():
        print(f"  {key:26} {_runs(value) if key == 'layer_types' else value}")
    print("tensors:")
    for name, n in counts.most_common():
        print(f"  {name:8} x{n:<4} {format_bytes(sizes[name])}")
    print(f"  total    x{sum(counts.values()):<4} {format_bytes(sum(sizes.values()))}")
    return 0


def _kernels(device) -> str:
    """Which op implementations run on ``device``, and why."""
    import os

    from .ops import cpu, cuda_kernels, triton_kernels

    requested = os.environ.get("OXIDE_IMPL")
    if requested:
        return f"{requested}, as OXIDE_IMPL asks"
    if device.type == "cuda":
        triton = "Triton" if triton_kernels.available_on_cuda() else "no Triton (not installed, or the GPU is too old)"
        return f"CUDA C++ {cuda_kernels.status()}; {triton}; PyTorch reference for the rest"
    if device.type != "cpu":
        return f"PyTorch reference (no compiled kernels for {device.type} yet)"
    return cpu.status()


def _describe_gguf(path, counts: Counter[str], sizes: Counter[str]):
    from .api import GGUF_NO_VISION
    from .models.builder import gguf_config
    from .quant import qtype_name
    from .weights.gguf import GGUFFile

    with GGUFFile(path) as gguf:
        spec, config = gguf_config(gguf)
        for t in gguf.tensors.values():
            counts[qtype_name(t.qtype)] += 1
            sizes[qtype_name(t.qtype)] += t.nbytes
        print(f"name:          {gguf.metadata.get('general.name', '?')}")
        print(f"architecture:  {spec.name} (GGUF {gguf.architecture!r})")
        print(f"tokenizer:     {gguf.metadata.get('tokenizer.ggml.model', '?')}, "
              f"{len(gguf.metadata.get('tokenizer.ggml.tokens', []))} tokens")
        print(f"chat template: {'in the file' if 'tokenizer.chat_template' in gguf.metadata else 'none in the file'}")
        print(f"images:        no: {GGUF_NO_VISION}")
    return config


def _describe_hf(path, counts: Counter[str], sizes: Counter[str]):
    from .models.hf import hf_config
    from .models.vision.config import vision_support
    from .sources import read_hf_config

    spec, config, reader, _ = hf_config(path)
    for name in reader.names():
        dtype, _, nbytes = reader.describe(name)
        counts[dtype] += 1
        sizes[dtype] += nbytes
    print(f"architecture:  {spec.name} (Hugging Face directory, {len(set(reader.files.values()))} safetensors file(s))")
    print(f"tokenizer:     {'tokenizer.json' if (path / 'tokenizer.json').exists() else 'missing'}")
    templates = [f for f in ("chat_template.jinja", "tokenizer_config.json") if (path / f).exists()]
    print(f"chat template: looked up in {', '.join(templates) or 'nothing: no template files'}")
    print(f"images:        {vision_support(read_hf_config(path)) or 'yes: Pixtral vision tower'}")
    return config


def _runs(items: Sequence[str]) -> str:
    """('a', 'a', 'b') -> 'a x2, b': run-length form of a per-layer list."""
    groups = [(item, len(list(run))) for item, run in itertools.groupby(items)]
    return ", ".join(item if n == 1 else f"{item} x{n}" for item, n in groups)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    ns, extra = parser.parse_known_args(argv)
    if ns.command == "run" and extra and not any(e.startswith("-") for e in extra):
        ns.args += extra   # `run MODEL --image PATH PROMPT`: argparse stops `args` at the first option
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return {"run": _run, "chat": _chat, "serve": _serve, "info": _info, "bench": _bench}[ns.command](ns)
    except OxideError as e:
        print(f"oxide: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
