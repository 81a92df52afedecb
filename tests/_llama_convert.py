"""llama.cpp's own HF-to-GGUF converter and K-quant quantizer, for GGUF files written by llama.cpp.

The converter (``convert_hf_to_gguf.py`` with its ``conversion/`` package) and ``gguf-py`` come from
the llama-cpp-python 0.3.36 sdist that ``tests/_sdist.py`` caches: same archive, same download, same
lock. They are unpacked once into ``<cache>/llama-cpp-python-0.3.36-convert/vendor/llama.cpp/``
through a temporary folder renamed into place when complete. The converter runs in a subprocess of
this interpreter, with the sdist's ``gguf-py`` on ``PYTHONPATH``; it needs torch, transformers, numpy
and, for Llama-family vocabularies, sentencepiece. The quantizer is llama.cpp's, through the
``llama_cpp`` binding.

    from _llama_convert import convert, quantize
    convert(hf_dir, "model-f16.gguf", "f16")
    quantize("model-f16.gguf", "model-q4_k_m.gguf", "Q4_K_M")
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _sdist import PACKAGE, VERSION, _download, _locked, cache_dir, extract_members

_ROOT = "vendor/llama.cpp/"
_MEMBERS = (_ROOT + "convert_hf_to_gguf.py", _ROOT + "conversion/", _ROOT + "gguf-py/")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def converter_dir() -> Path:
    """The sdist's ``vendor/llama.cpp/``, holding ``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/``.

    Fetches the sdist (about 75 MB, shared with ``_sdist.llama_cpp_models_dir``) on first use.
    """
    root = cache_dir()
    final = root / f"{PACKAGE}-{VERSION}-convert"
    tools = final / _ROOT
    if (tools / "convert_hf_to_gguf.py").is_file():
        return tools
    with _locked(root / f"{PACKAGE}-{VERSION}.lock"):
        if (tools / "convert_hf_to_gguf.py").is_file():  # another process finished while we waited
            return tools
        archive = _download(root)
        staging = Path(tempfile.mkdtemp(prefix=f".{PACKAGE}-convert-unpack-", dir=root))
        try:
            extract_members(archive, staging, _MEMBERS, _MEMBERS[0])
            if final.exists():  # an incomplete folder left by an older layout: replace it
                shutil.rmtree(final)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return tools


# Runs convert_hf_to_gguf.py with the converter's pre-tokenizer detection answering argv[2]: llama.cpp
# recognises a GPT-2 BPE vocabulary by hashing a real tokenizer's output, which a tiny test vocabulary
# cannot reproduce. Everything else (tensors, metadata, the vocabulary itself) is the converter's own work.
_NAMED_PRE_TOKENIZER = """
import runpy, sys
tools, pre = sys.argv[1], sys.argv[2]
sys.path.insert(0, tools)
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [tools + "/convert_hf_to_gguf.py", *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert(hf_dir: str | os.PathLike[str], out_gguf: str | os.PathLike[str], outtype: str = "f16", *,
            bpe_pre: str | None = None) -> Path:
    """Convert the Hugging Face folder ``hf_dir`` to ``out_gguf`` with llama.cpp's converter.

    ``outtype`` is one of ``OUTTYPES``. ``bpe_pre``: the llama.cpp pre-tokenizer name (``qwen2``...) to
    record for a GPT-2 BPE vocabulary that the converter cannot recognise (a tiny test one). Raises
    ``RuntimeError`` with the converter's output when it fails.
    """
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {OUTTYPES}, not {outtype!r}")
    tools = converter_dir()
    out = Path(out_gguf)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tools / "gguf-py"), env.get("PYTHONPATH")]))
    args = [str(hf_dir), "--outfile", str(out), "--outtype", outtype]
    if bpe_pre is None:
        cmd = [sys.executable, str(tools / "convert_hf_to_gguf.py"), *args]
    else:
        cmd = [sys.executable, "-c", _NAMED_PRE_TOKENIZER, str(tools), bpe_pre, *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"llama.cpp's converter failed (exit {result.returncode}): {' '.join(cmd)}\n"
                           f"{(result.stdout + result.stderr)[-4000:]}")
    return out


def quantize(src_gguf: str | os.PathLike[str], dst_gguf: str | os.PathLike[str], ftype: int | str = "Q4_K_M",
             nthread: int = 0) -> Path:
    """Quantize ``src_gguf`` into ``dst_gguf`` with llama.cpp's ``llama_model_quantize``.

    ``ftype`` is a ``llama_cpp.LLAMA_FTYPE_*`` value or the name after ``LLAMA_FTYPE_MOSTLY_``
    (``"Q4_K_M"``, ``"Q8_0"``, ...). ``nthread`` 0 lets llama.cpp use every core.
    """
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}") if isinstance(ftype, str) else ftype
    params.nthread = nthread
    dst = Path(dst_gguf)
    status = llama_cpp.llama_model_quantize(os.fsencode(src_gguf), os.fsencode(dst), ctypes.byref(params))
    if status != 0 or not dst.is_file():
        raise RuntimeError(f"llama_model_quantize({src_gguf}, {dst}, ftype={params.ftype}) returned {status}")
    return dst
