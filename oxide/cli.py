"""Command line: ``oxide run [MODEL] PROMPT`` and ``oxide info MODEL`` (also ``python -m oxide``)."""

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oxide", description="Run local LLMs (GGUF).")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="generate a completion, streamed to stdout")
    run.add_argument("args", nargs="+", metavar="[MODEL] PROMPT",
                     help="a .gguf path (optional: default Gemma 3 270M) and the prompt")
    run.add_argument("-n", "--max-new-tokens", type=int, default=256)
    run.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    run.add_argument("--system", help="system message (implies --chat)")
    run.add_argument("--temperature", "--temp", type=float, default=0.8, help="0 = greedy")
    run.add_argument("--top-k", type=int, default=40)
    run.add_argument("--top-p", type=float, default=0.95)
    run.add_argument("--min-p", type=float, default=0.05)
    run.add_argument("--seed", type=int)
    run.add_argument("--repeat-penalty", type=float, default=1.0)
    run.add_argument("--repeat-last-n", type=int, default=64)
    run.add_argument("--presence-penalty", type=float, default=0.0)
    run.add_argument("--frequency-penalty", type=float, default=0.0)
    run.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    run.add_argument("--ignore-eos", action="store_true")
    run.add_argument("--stats", action="store_true", help="print token counts and speeds to stderr")
    _add_model_options(run)

    info = commands.add_parser("info", help="describe a model: architecture, config, tensors, decisions")
    info.add_argument("model", nargs="?", help="a .gguf path (default: Gemma 3 270M)")
    _add_model_options(info)
    return parser


def _run(ns: argparse.Namespace) -> int:
    import oxide

    if len(ns.args) > 2:
        raise oxide.InvalidOptionError("run takes [MODEL] PROMPT; quote a prompt that has spaces")
    model_path, prompt = (None, ns.args[0]) if len(ns.args) == 1 else ns.args
    sampling = oxide.SamplingOptions(
        temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p, min_p=ns.min_p, seed=ns.seed,
        repeat_penalty=ns.repeat_penalty, repeat_last_n=ns.repeat_last_n,
        presence_penalty=ns.presence_penalty, frequency_penalty=ns.frequency_penalty)
    model = oxide.load(model_path, device=ns.device, dtype=ns.dtype, n_ctx=ns.n_ctx)
    request = prompt
    if ns.chat or ns.system:
        request = ([{"role": "system", "content": ns.system}] if ns.system else []) + [{"role": "user", "content": prompt}]
    generation = model.stream(request, max_new_tokens=ns.max_new_tokens, sampling=sampling, stop=ns.stop,
                              ignore_eos=ns.ignore_eos)
    for piece in generation:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if ns.stats and generation.completion is not None:
        s = generation.completion.stats
        print(f"prompt: {s.prompt_tokens} tokens, {s.prefill_tokens_per_second:.1f} tok/s; "
              f"generated: {s.completion_tokens} tokens, {s.decode_tokens_per_second:.1f} tok/s; "
              f"finish: {generation.completion.finish_reason}", file=sys.stderr)
    return 0


def _info(ns: argparse.Namespace) -> int:
    from .device import device_reason, select_device
    from .log import format_bytes
    from .models.builder import gguf_config
    from .precision import choose_precision
    from .quant import qtype_name
    from .sources import resolve_source
    from .weights.gguf import GGUFFile

    source = resolve_source(ns.model)
    if source.kind != "gguf":
        raise OxideError(f"{source.path}: `oxide info` reads GGUF files; pass a .gguf path")
    with GGUFFile(source.path) as gguf:
        spec, config = gguf_config(gguf)
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for t in gguf.tensors.values():
            counts[qtype_name(t.qtype)] += 1
            sizes[qtype_name(t.qtype)] += t.nbytes
        print(f"file:          {source.path}")
        print(f"name:          {gguf.metadata.get('general.name', '?')}")
        print(f"architecture:  {spec.name} (GGUF {gguf.architecture!r})")
        print(f"tokenizer:     {gguf.metadata.get('tokenizer.ggml.model', '?')}, "
              f"{len(gguf.metadata.get('tokenizer.ggml.tokens', []))} tokens")
        print(f"chat template: {'yes' if 'tokenizer.chat_template' in gguf.metadata else 'none in file'}")
    device = select_device(ns.device)
    policy = choose_precision(device, ns.dtype)
    print(f"device:        {device} ({device_reason(device, ns.device)})")
    print(f"compute dtype: {policy.compute_dtype} ({policy.compute_reason})")
    print(f"kv cache:      {policy.kv_cache_dtype} ({policy.kv_cache_reason})")
    print("config:")
    for key, value in config.summary().items():
        print(f"  {key:26} {_runs(value) if key == 'layer_types' else value}")
    print("tensors:")
    for name, n in counts.most_common():
        print(f"  {name:8} x{n:<4} {format_bytes(sizes[name])}")
    print(f"  total    x{sum(counts.values()):<4} {format_bytes(sum(sizes.values()))}")
    return 0


def _runs(items: Sequence[str]) -> str:
    """('a', 'a', 'b') -> 'a x2, b': run-length form of a per-layer list."""
    groups = [(item, len(list(run))) for item, run in itertools.groupby(items)]
    return ", ".join(item if n == 1 else f"{item} x{n}" for item, n in groups)


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        return _run(ns) if ns.command == "run" else _info(ns)
    except OxideError as e:
        print(f"oxide: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
