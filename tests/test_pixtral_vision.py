"""Pixtral-Llava seeing images: oxide against transformers on a tiny random model saved as a folder.

The model: transformers' ``LlavaForConditionalGeneration`` with a Pixtral vision tower (hidden 64, 2 layers,
2 heads of 32, patch 16, images up to 64 pixels, SiLU MLP; the feature layer the last, strategy "full", as
Pixtral 12B's config.json) over the tiny Mistral of ``_arch_cases``; weights redrawn by ``_arch_cases.randomize``.
Its folder has a byte-level BPE tokenizer with Pixtral's special tokens and a Pixtral-style chat template.

Pixel values come from transformers' ``PixtralImageProcessorPil`` (the model is tested, not the preprocessor);
the image tokens of the reference prompt from ``PixtralProcessor.replace_image_token`` itself (compiled from
transformers' source). Tolerance:
float32 logits within 1e-3 of their range (max abs difference <= 1e-3 * (max - min)).
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration, PixtralVisionConfig
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

import oxide
from oxide import cli, ops
from oxide.errors import MediaError, OxideError
from oxide.images import image_prompt
from oxide.models.vision.pixtral import PixtralEncoder
from oxide.models.vision.placement import ImageTokens, image_token_ids
from oxide.ops import dispatch, reference, triton_kernels

from _arch_cases import VOCAB, _mistral_config, randomize

SPECIALS = ["<s>", "</s>", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"]
IMG, BREAK, END = 2, 3, 4
PATCH, LONGEST = 16, 64
CORPUS = ["Describe the picture: a red square, two blue circles and a cat on a mat. What is there?"] * 30
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST]"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for part in m.content %}"
    "{% if part.type == 'image' %}[IMG]{% else %}{{ part.text }}{% endif %}{% endfor %}{% endif %}[/INST]"
    "{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"
)
REL_TOL = 1e-3


def build_model() -> LlavaForConditionalGeneration:
    vision = PixtralVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=LONGEST, patch_size=PATCH, hidden_act="silu")
    config = LlavaConfig(vision_config=vision, text_config=_mistral_config(num_hidden_layers=2), image_token_id=IMG,
                         vision_feature_layer=-1, vision_feature_select_strategy="full", projector_hidden_act="gelu")
    config._attn_implementation = "eager"
    return randomize(LlavaForConditionalGeneration(config), 41, 1.0)


def write_tokenizer(directory: Path) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast",
         "chat_template": TEMPLATE}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[LlavaForConditionalGeneration, Path]:
    hf = build_model()
    directory = tmp_path_factory.mktemp("pixtral")
    hf.save_pretrained(directory, safe_serialization=True)
    write_tokenizer(directory)
    return hf, directory


@pytest.fixture(scope="module")
def model(folder) -> oxide.Model:
    return oxide.load(folder[1], device="cpu", dtype="f32")


def random_image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(*images: Image.Image) -> tuple[list[torch.Tensor], torch.Tensor, list[list[int]]]:
    """Each image's pixel values (C, H, W), the padded batch and the sizes, from transformers' PIL processor."""
    out = PixtralImageProcessorPil(size={"longest_edge": LONGEST}, patch_size={"height": PATCH, "width": PATCH})(
        list(images), return_tensors="pt")
    sizes = [list(map(int, s)) for s in out["image_sizes"]]
    return [out["pixel_values"][i, :, :h, :w] for i, (h, w) in enumerate(sizes)], out["pixel_values"], sizes


def _replace_image_token():
    """transformers' own ``PixtralProcessor.replace_image_token``, compiled from its source: the processor's
    module imports torchvision, which does not install beside torch 2.13 (so the module cannot be imported)."""
    import transformers.models.pixtral as package

    source = (Path(inspect.getfile(package)).parent / "processing_pixtral.py").read_text()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "PixtralProcessor")
    method = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "replace_image_token")
    namespace: dict = {}
    exec(compile(ast.Module([method], type_ignores=[]), "processing_pixtral.py", "exec"), namespace)
    return namespace["replace_image_token"]


REPLACE_IMAGE_TOKEN = _replace_image_token()


def reference_text(text: str, sizes: list[list[int]]) -> str:
    """``text`` with each [IMG] expanded by transformers' ``PixtralProcessor.replace_image_token``."""
    processor = SimpleNamespace(patch_size=PATCH, spatial_merge_size=1, image_token="[IMG]",
                                image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]")
    pieces = text.split("[IMG]")
    out = pieces[0]
    for i, piece in enumerate(pieces[1:]):
        out += REPLACE_IMAGE_TOKEN(processor, {"image_sizes": sizes}, i) + piece
    return out


def hf_logits(hf, ids: list[int], batch: torch.Tensor, sizes: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=torch.tensor([ids]), pixel_values=batch, image_sizes=torch.tensor(sizes)).logits[0]


def assert_close_to_range(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference over the reference's range, which must be <= REL_TOL; returned for the report."""
    error = ((ours - ref).abs().max() / (ref.max() - ref.min())).item()
    assert error <= REL_TOL, f"logits differ by {error:.2e} of their range"
    return error


PROMPT = "[INST]Describe [IMG] and then [IMG] please[/INST]"


def test_two_images_of_different_sizes_equal_transformers(folder, model) -> None:
    hf, directory = folder
    per_image, batch, sizes = pixels(random_image(50, 37, 1), random_image(23, 61, 2))
    assert sizes[0] != sizes[1]
    reference_ids = AutoTokenizer.from_pretrained(str(directory))(reference_text(PROMPT, sizes)).input_ids
    ids = model.encode_prompt(PROMPT)
    assert ids.count(IMG) == 2
    ours = model.logits(ids, images=per_image)
    ref = hf_logits(hf, reference_ids, batch, sizes)
    assert ours.shape == ref.shape
    error = assert_close_to_range(ours, ref)
    print(f"pixtral logits, two images {sizes}: max abs diff / range = {error:.2e}")


@pytest.mark.skipif(not triton_kernels.importable(), reason="triton is not installed")
def test_vision_encoder_through_the_triton_kernels(model, monkeypatch: pytest.MonkeyPatch) -> None:
    """``OXIDE_IMPL=triton`` (the interpreter on the CPU): the patch matmul, the projections, RoPE and the
    block-diagonal attention run as kernels, as on a CUDA device; the features equal the compiled CPU core's
    within 1e-4 of their range (float32)."""
    per_image, _, _ = pixels(random_image(50, 37, 13), random_image(23, 61, 14))
    want = model.vision.encoder(per_image)
    monkeypatch.setenv("OXIDE_IMPL", "triton")
    assert dispatch.chosen_name("attention", "cpu", torch.float32, torch.float32, torch.float32) == "triton"
    v = model.vision
    encoder = PixtralEncoder(v.config, v.encoder.weights, v.device, v.dtype)
    assert encoder.ops.attention.__module__ == "oxide.kernels.attention"
    got = encoder(per_image)
    assert ((got - want).abs().max() / (want.max() - want.min())).item() <= 1e-4


def test_image_tokens_as_the_processor_places_them(folder, model) -> None:
    _, directory = folder
    tokens = ImageTokens.from_tokenizer(model.tokenizer, IMG)
    assert tokens == ImageTokens(IMG, BREAK, END)
    hf_tok = AutoTokenizer.from_pretrained(str(directory))
    for rows, cols in ((1, 1), (2, 3), (4, 1)):
        text = reference_text("[IMG]", [[rows * PATCH, cols * PATCH]])
        assert image_token_ids(rows, cols, tokens) == hf_tok(text, add_special_tokens=False).input_ids


def test_incremental_decode_after_the_image_prompt(folder, model) -> None:
    """The image prompt's cache, then tokens one at a time: the same logits as one forward over all of it."""
    hf, directory = folder
    per_image, batch, sizes = pixels(random_image(40, 64, 3))
    ids = model.encode_prompt("[INST][IMG] what is it?[/INST]")
    tokens = ImageTokens.from_tokenizer(model.tokenizer, IMG)
    prompt = image_prompt(model.lm, model.vision, tokens, ids, per_image, bos=model.tokenizer.bos_id, chat=False)
    follow = [17, 40, 101]
    lm = model.lm
    cache = lm.new_cache(len(prompt.ids) + len(follow))
    steps = [lm.forward_embeddings(prompt.embeddings, cache)[0, -1]]
    for token in follow:
        steps.append(lm.forward(torch.tensor([[token]]), cache, last_only=True)[0, -1])
    whole = hf_logits(hf, prompt.ids + follow, batch, sizes)[len(prompt.ids) - 1:]
    assert_close_to_range(torch.stack(steps), whole)


def test_generate_and_stream_with_images(folder, model) -> None:
    hf, directory = folder
    per_image, batch, sizes = pixels(random_image(64, 33, 4), random_image(17, 29, 5))
    greedy = oxide.SamplingOptions.greedy()
    done = model.generate(PROMPT, images=per_image, max_new_tokens=4, sampling=greedy, ignore_eos=True)
    reference_ids = AutoTokenizer.from_pretrained(str(directory))(reference_text(PROMPT, sizes)).input_ids
    assert done.stats.prompt_tokens == len(reference_ids)
    assert done.token_ids[0] == int(hf_logits(hf, reference_ids, batch, sizes)[-1].argmax())
    streamed = model.stream(PROMPT, images=per_image, max_new_tokens=4, sampling=greedy, ignore_eos=True)
    assert "".join(streamed) == done.text and streamed.completion.token_ids == done.token_ids


def test_a_text_prompt_without_placeholder_gets_the_image_first(model) -> None:
    per_image, _, _ = pixels(random_image(32, 32, 6))
    placed = model.logits(model.encode_prompt("[IMG]describe"), images=per_image)
    first = model.logits(model.encode_prompt("describe"), images=per_image)
    torch.testing.assert_close(first, placed, rtol=0, atol=0)


def test_chat_image_parts(folder, model) -> None:
    """Image parts render as [IMG] through the template; their images come with the part or from images=."""
    per_image, _, sizes = pixels(random_image(48, 30, 7), random_image(20, 64, 8))
    messages = [{"role": "user", "content": [{"type": "text", "text": "Compare "},
                                             {"type": "image", "image": per_image[0]},
                                             {"type": "text", "text": " with "},
                                             {"type": "image"}]}]
    assert model.encode_prompt(messages) == model.encode_prompt("<s>[INST]Compare [IMG] with [IMG][/INST]")
    greedy = oxide.SamplingOptions.greedy()
    chat = model.generate(messages, images=[per_image[1]], max_new_tokens=3, sampling=greedy, ignore_eos=True)
    text = model.generate("[INST]Compare [IMG] with [IMG][/INST]", images=per_image, max_new_tokens=3,
                          sampling=greedy, ignore_eos=True)
    assert chat.token_ids == text.token_ids and chat.stats.prompt_tokens == text.stats.prompt_tokens
    with pytest.raises(MediaError, match="images= has none left"):
        model.generate(messages, max_new_tokens=1)
    with pytest.raises(MediaError, match="have no {'type': 'image'} part"):
        model.generate(messages, images=per_image, max_new_tokens=1)


def test_images_through_the_pixtral_preset(folder, model, tmp_path: Path) -> None:
    """A PIL image, its file and its bytes go through ``ImagePreprocessor.preset("pixtral")`` with the model's patch
    size and limit: the same logits as transformers' processor's pixels."""
    image = random_image(70, 45, 11)
    path = tmp_path / "image.png"
    image.save(path)
    per_image, _, _ = pixels(image)
    ids = model.encode_prompt("[INST][IMG]describe[/INST]")
    want = model.logits(ids, images=per_image)
    for given in (image, path, str(path), path.read_bytes()):
        assert_close_to_range(model.logits(ids, images=[given]), want)


def test_cli_image(folder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, directory = folder
    path = tmp_path / "cat.png"
    random_image(40, 52, 9).save(path)
    flags = ["-n", "3", "--temperature", "0", "--ignore-eos", "--device", "cpu", "--dtype", "f32"]
    code = cli.main(["run", str(directory), "--image", str(path), "--image", str(path), *flags, "describe"])
    assert code == 0, capsys.readouterr().err
    plain = capsys.readouterr().out
    api = oxide.load(directory, device="cpu", dtype="f32").generate(
        "describe", images=[path, path], max_new_tokens=3, sampling=oxide.SamplingOptions.greedy(), ignore_eos=True)
    assert plain == api.text + "\n"
    assert cli.main(["run", str(directory), "--chat", "--image", str(path), *flags, "describe"]) == 0
    assert cli.main(["info", str(directory), "--device", "cpu"]) == 0
    assert "images:        yes: Pixtral vision tower" in capsys.readouterr().out
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    assert cli.main(["run", str(directory), "--image", str(corrupt), "-n", "1", "--device", "cpu", "hi"]) == 2
    assert f"oxide: error: image file {str(corrupt)!r} is not an image" in capsys.readouterr().err
    with pytest.raises(MediaError, match="corrupt.png"):
        oxide.load(directory, device="cpu").generate("hi", images=[corrupt], max_new_tokens=1)


def test_bad_pixels_are_media_errors(model) -> None:
    good, _, _ = pixels(random_image(32, 32, 10))
    cases = {
        "must be a multiple of the patch size": torch.zeros(3, 30, 32),
        "model's limit of 64 pixels": torch.zeros(3, 80, 32),
        "1 channels, but the vision tower takes 3": torch.zeros(1, 32, 32),
        "float tensor": torch.zeros(32, 32, dtype=torch.uint8),
        "NaN or infinity": torch.full((3, 32, 32), float("nan")),
    }
    for message, bad in cases.items():
        with pytest.raises(MediaError, match=message):
            model.logits(model.encode_prompt("[IMG]x"), images=[bad])
    with pytest.raises(MediaError, match="2 image placeholder"):
        model.logits(model.encode_prompt("[IMG][IMG]x"), images=good)
    with pytest.raises(oxide.InvalidOptionError, match="images must be a list of images, got a str"):
        model.logits(model.encode_prompt("[IMG]x"), images="cat.png")
    with pytest.raises(MediaError, match="web address"):
        model.generate([{"role": "user", "content": [{"type": "image", "url": "https://x.org/a.png"}]}])


def test_a_text_only_model_refuses_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from _arch_cases import build_mistral

    build_mistral().save_pretrained(tmp_path, safe_serialization=True)
    write_tokenizer(tmp_path)
    text_only = oxide.load(tmp_path, device="cpu")
    assert text_only.vision is None
    with pytest.raises(MediaError, match="takes no images: config.json has no vision_config"):
        text_only.generate("hi", images=[torch.zeros(3, 16, 16)], max_new_tokens=1)
    path = tmp_path / "a.png"
    random_image(16, 16, 12).save(path)
    assert cli.main(["run", str(tmp_path), "--image", str(path), "--device", "cpu", "hi"]) == 2
    assert "takes no images" in capsys.readouterr().err


def test_default_strategy_loads_text_only_and_says_why(tmp_path: Path) -> None:
    from _arch_cases import build_pixtral

    build_pixtral().save_pretrained(tmp_path, safe_serialization=True)
    loaded = oxide.load(tmp_path, device="cpu")
    assert loaded.vision is None and "vision_feature_select_strategy is 'default'" in loaded.info.vision
    with pytest.raises(MediaError, match="takes no images.*'default'"):
        loaded.logits([1, 2, 3], images=[torch.zeros(3, 16, 16)])


def test_a_gguf_model_refuses_images(gemma_path: Path) -> None:
    gguf = oxide.load(gemma_path, device="cpu")
    with pytest.raises(OxideError, match="mmproj"):
        gguf.generate("hi", images=[torch.zeros(3, 16, 16)], max_new_tokens=1)


def test_activation_op_equals_torch() -> None:
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    expected = {"silu": torch.nn.functional.silu(x), "gelu": torch.nn.functional.gelu(x),
                "gelu_pytorch_tanh": torch.nn.functional.gelu(x, approximate="tanh")}
    for act, want in expected.items():
        torch.testing.assert_close(ops.activation(x, act), want, rtol=0, atol=0)
    with pytest.raises(OxideError, match="relu"):
        reference.activation(x, "relu")
