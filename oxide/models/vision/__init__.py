"""Vision towers: images to embeddings that a language model takes among its token embeddings.

Pixtral-Llava (``LlavaForConditionalGeneration`` with a Pixtral tower) only: :mod:`.config` (settings),
:mod:`.weights` (the checkpoint's tensors), :mod:`.pixtral` (the encoder), :mod:`.projector` (LLaVA's projector),
:mod:`.model` (the two together, and the builder), :mod:`.placement` (the image tokens of a prompt).
"""
