"""Property tests (hypothesis) over what users hand to dove-vlm: images of any size, mode and dtype (NaN/Inf
included) through `DoveImageProcessor`, arbitrary `encode` arguments and query strings, the LLaVA processor's
placeholder expansion, and damaged weight files. Every input either works — with token counts in
[1, max_tokens] — or raises a ValueError/TypeError whose message says what is wrong; nothing hangs.

`FUZZ_EXAMPLES` (environment) sets the number of examples per property (default 150; the file then runs in
well under a minute). Run with `--hypothesis-show-statistics` to see how many inputs were tried."""

import contextlib
import os
import re
import signal
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from PIL import Image

from dove_vlm import DoveImageProcessor, DoveModel, preset_config
from dove_vlm.query_tokenizer import default_query_tokenizer
from tests.conftest import MICRO_OVERRIDES

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLEAR_ERRORS = (ValueError, TypeError)
HANG_SECONDS = 30


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    """Fail (instead of hanging) when the block runs longer than `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"hung for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_clear(err: Exception, *words: str) -> None:
    """A clear error: one of the documented types, a real sentence, naming what it is about."""
    assert isinstance(err, CLEAR_ERRORS), f"{type(err).__name__}: {err}"
    message = str(err)
    event(f"refused: {type(err).__name__}: {re.sub(r'[0-9]+', 'N', message)[:60]}")
    assert len(message) > 20, message
    assert any(word.lower() in message.lower() for word in words), message


# Images ---------------------------------------------------------------------------------------------------------
DTYPES = [np.uint8, np.uint16, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]
PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F", "RGBX", "La"]
SPECIALS = [np.nan, np.inf, -np.inf]


@st.composite
def arrays(draw):
    height, width = draw(st.integers(0, 80)), draw(st.integers(0, 80))
    layout = draw(st.sampled_from([(), (1,), (3,), (4,), (2,), (5,), "flat", "4d"]))
    shape = {"flat": (height,), "4d": (height, width, 3, 1)}.get(layout, (height, width, *layout)) \
        if isinstance(layout, str) else (height, width, *layout)
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.bool_:
        array = rng.random(shape) > 0.5
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        scale = draw(st.sampled_from([1.0, 255.0, 1e4, 1e30 if dtype != np.float16 else 6e4]))
        array = ((rng.random(shape) * 2 - draw(st.sampled_from([0.0, 1.0]))) * scale).astype(dtype)
        if array.size and draw(st.booleans()):
            array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from(SPECIALS))
    return array


@st.composite
def pil_images(draw):
    mode = draw(st.sampled_from(PIL_MODES))
    size = (draw(st.integers(0, 80)), draw(st.integers(0, 80)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    if mode in ("LAB", "HSV", "La", "PA"):
        return Image.new(mode, size)
    return rgb.convert(mode)


@st.composite
def tensors(draw):
    height, width = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    channels = draw(st.sampled_from([1, 3, 4]))
    chw = draw(st.booleans())
    shape = (channels, height, width) if chw else (height, width, channels)
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, dtype=dtype, generator=generator)
    tensor = (torch.rand(shape, generator=generator) * 2 - 1).to(dtype)
    if draw(st.booleans()):
        tensor.view(-1)[draw(st.integers(0, tensor.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    return tensor


@FUZZ
@given(image=st.one_of(arrays(), pil_images(), tensors()), size=st.sampled_from([1, 7, 32]),
       resize_mode=st.sampled_from(["center_crop", "squash"]), do_resize=st.sampled_from([True, True, True, False]))
def test_image_processor_takes_anything_or_says_why(image, size, resize_mode, do_resize):
    processor = DoveImageProcessor(size=size, resize_mode=resize_mode, do_resize=do_resize)
    note(f"{type(image).__name__} {getattr(image, 'shape', getattr(image, 'size', None))} "
         f"{getattr(image, 'dtype', getattr(image, 'mode', None))}")
    try:
        with no_hang():
            pixels = processor(image)["pixel_values"]
    except CLEAR_ERRORS as err:
        assert_clear(err, "image")
        return
    event("accepted")
    assert pixels.shape == (1, 3, size, size) and pixels.dtype == torch.float32
    assert torch.isfinite(pixels).all() and pixels.min() >= -1 and pixels.max() <= 1


def test_image_processor_rejects_non_finite_and_empty_images():
    processor = DoveImageProcessor(size=8)
    for bad in (np.full((4, 4, 3), np.nan, np.float32), torch.full((3, 4, 4), float("inf")),
                np.zeros((0, 5, 3), np.uint8), Image.new("RGB", (0, 3))):
        with pytest.raises(ValueError, match="NaN|empty"):
            processor(bad)


# encode -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    tokenizer = default_query_tokenizer(num_scenes=50)
    torch.manual_seed(0)
    plain = DoveModel(preset_config("tiny", **MICRO_OVERRIDES)).eval()
    torch.manual_seed(0)
    queried = DoveModel(preset_config("tiny", **MICRO_OVERRIDES, query_vocab_size=len(tokenizer), query_max_length=8))
    queried.set_query_tokenizer(tokenizer)
    with torch.no_grad():  # spread p_eos so that lengths vary
        for model in (plain, queried):
            model.eos_head.weight.normal_(0, 2.0)
            model.eos_head.bias.fill_(-1.0)
    return {"plain": plain, "query": queried.eval()}


QUERY_TEXT = st.one_of(st.none(), st.text(max_size=60),
                       st.lists(st.sampled_from(["the", "red", "circle", "blue", "square", "?", "where", "is", "<image>",
                                                 "🙂", "\x00", "\n", "  "]), max_size=20).map(" ".join))


@st.composite
def encode_calls(draw):
    batch = draw(st.sampled_from([1, 1, 2, 3, 3, 0]))
    shape = draw(st.sampled_from([(batch, 3, 32, 32)] * 6 + [(batch, 3, 16, 16), (batch, 1, 32, 32), (3, 32, 32),
                                                              (1, batch, 3, 32, 32)]))
    dtype = draw(st.sampled_from([torch.float32] * 8 + [torch.float64, torch.float16, torch.bfloat16, torch.uint8,
                                                        torch.int64, torch.bool]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1.0, 1.0, 1.0, 3.0, 1e3]))
    pixels = ((torch.rand(shape, generator=generator) * 2 - 1) * scale).to(dtype)
    special = pixels.is_floating_point() and pixels.numel() > 0 and not draw(st.integers(0, 5))
    if special:
        pixels.view(-1)[draw(st.integers(0, pixels.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    kwargs = dict(
        max_tokens=draw(st.one_of(st.none(), st.integers(1, 16), st.integers(-2, 20))),
        eos_threshold=draw(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                                     st.floats(0, 1))),
        min_tokens=draw(st.one_of(st.none(), st.integers(-3, 20))),
        num_tokens=draw(st.one_of(st.none(), st.none(), st.integers(-5, 30),
                                  st.lists(st.integers(-5, 30), min_size=max(batch, 1), max_size=max(batch, 1))
                                  .map(torch.tensor),
                                  st.lists(st.integers(-5, 30), min_size=4, max_size=5).map(torch.tensor))),
        early_exit=draw(st.booleans()),
        chunk_size=draw(st.one_of(st.none(), st.integers(-2, 20))),
        query_min_tokens=draw(st.one_of(st.none(), st.integers(-2, 20))),
        query_max_tokens=draw(st.one_of(st.none(), st.integers(-2, 20))),
    )
    queries = draw(st.one_of(QUERY_TEXT, st.lists(QUERY_TEXT, min_size=max(batch, 1), max_size=max(batch, 1)),
                             st.lists(QUERY_TEXT, min_size=4, max_size=4)))
    return pixels, queries, kwargs, special


@FUZZ
@given(call=encode_calls(), which=st.sampled_from(["plain", "query"]))
def test_encode_gives_valid_lengths_or_a_clear_error(models, call, which):
    model = models[which]
    pixels, queries, kwargs, special = call
    queries = queries if which == "query" else None
    note(f"pixels {tuple(pixels.shape)} {pixels.dtype}, queries={queries!r}, {kwargs}")
    try:
        with no_hang(), torch.no_grad():
            out = model.encode(pixels, queries=queries, **kwargs)
    except CLEAR_ERRORS as err:
        assert_clear(err, "pixel", "max_tokens", "num_tokens", "quer", "image")
        return
    assert not special, "NaN/Inf pixels were accepted"
    event(f"encoded ({which}, early_exit={kwargs['early_exit']})")
    cap = kwargs["max_tokens"] or model.config.max_tokens
    batch = pixels.shape[0]
    assert out.lengths.shape == (batch,) and out.lengths.dtype == torch.long
    assert int(out.lengths.min()) >= 1 and int(out.lengths.max()) <= cap
    assert out.tokens.shape == (batch, int(out.lengths.max()), model.config.token_dim)
    assert torch.equal(out.attention_mask.sum(1), out.lengths)
    if pixels.abs().max() <= 3:
        assert torch.isfinite(out.tokens).all()


@FUZZ
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(2, 4), which=st.sampled_from(["plain", "query"]),
       queries=st.lists(QUERY_TEXT, min_size=4, max_size=4), max_tokens=st.integers(1, 16),
       eos_threshold=st.floats(0, 1), min_tokens=st.integers(1, 16),
       query_limits=st.tuples(st.one_of(st.none(), st.integers(1, 16)), st.one_of(st.none(), st.integers(1, 16))))
def test_valid_encodes_are_in_range_and_independent_of_the_batch(models, seed, batch, which, queries, max_tokens,
                                                                  eos_threshold, min_tokens, query_limits):
    """Any valid call: lengths in [1, max_tokens], and each image gets bit-identical tokens alone or batched."""
    model = models[which]
    pixels = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    queries = queries[:batch] if which == "query" else [None] * batch
    kwargs = dict(max_tokens=max_tokens, eos_threshold=eos_threshold, min_tokens=min_tokens,
                  query_min_tokens=query_limits[0], query_max_tokens=query_limits[1])
    with no_hang(), torch.no_grad():
        out = model.encode(pixels, queries=queries, **kwargs)
        assert int(out.lengths.min()) >= 1 and int(out.lengths.max()) <= max_tokens
        for i in range(batch):
            single = model.encode(pixels[i : i + 1], queries=queries[i : i + 1], **kwargs)
            assert torch.equal(single.lengths[0], out.lengths[i])
            assert torch.equal(single.tokens[0], out.tokens[i, : single.tokens.shape[1]])
    event(f"lengths {sorted(set(out.lengths.tolist()))[:1]}..{int(out.lengths.max())}")


@FUZZ
@given(text=QUERY_TEXT)
def test_any_query_string_is_tokenized_within_the_budget(models, text):
    model = models["query"]
    with no_hang():
        ids, mask = model.tokenize_queries([text, None], batch_size=2)
    if ids is None:
        assert not (text or "").strip()
        return
    assert ids.shape == mask.shape and ids.shape[1] <= model.config.query_max_length
    assert int(ids.max()) < model.config.query_vocab_size and int(mask[1].sum()) == 0


# The LLaVA processor's placeholder expansion ----------------------------------------------------------------
@pytest.fixture(scope="module")
def llava_processor():
    from dove_vlm.llava import DoveLlavaProcessor
    from tests.llava.tiny_models import make_tower, text_tokenizer

    tower = make_tower("adaptive", query=True)
    processor = DoveLlavaProcessor(image_processor=DoveImageProcessor(size=32), tokenizer=text_tokenizer())
    return processor, tower


WORDS = st.sampled_from(["what", "colour", "is", "the", "circle", "?", "red", "USER:", "ASSISTANT:", "zebra", "é",
                         "🙂", "\n", "<imag", "image>", "<<", ""])


@st.composite
def llava_batches(draw):
    prompts, counts = [], []
    for _ in range(draw(st.integers(1, 3))):
        markers = draw(st.integers(0, 3))
        pieces = [" ".join(draw(st.lists(WORDS, max_size=8))) for _ in range(markers + 1)]
        prompts.append("<image>".join(pieces))
        counts.append(markers)
    total = sum(counts)
    image_count = total if draw(st.integers(0, 9)) else draw(st.integers(0, 4))
    lengths = draw(st.lists(st.integers(1, 16), min_size=image_count, max_size=image_count))
    if image_count and not draw(st.integers(0, 9)):
        lengths[draw(st.integers(0, image_count - 1))] = draw(st.integers(-3, 0))
    use_tower = draw(st.booleans())
    queries = draw(st.one_of(st.just("auto"), st.none(), QUERY_TEXT,
                             st.lists(QUERY_TEXT, min_size=image_count, max_size=image_count)))
    return prompts, counts, image_count, lengths, use_tower, queries


@FUZZ
@given(batch=llava_batches(), seed=st.integers(0, 2**31 - 1))
def test_llava_placeholder_expansion(llava_processor, batch, seed):
    processor, tower = llava_processor
    prompts, counts, image_count, lengths, use_tower, queries = batch
    processor.tower = tower if use_tower else None
    images = list(torch.rand(image_count, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1)
    note(f"prompts={prompts!r} lengths={lengths} tower={use_tower} queries={queries!r}")
    try:
        with no_hang():
            out = processor(images=images or None, text=prompts, image_queries=queries,
                            image_lengths=None if use_tower else (lengths or None))
    except CLEAR_ERRORS as err:
        assert_clear(err, "image", "marker", "quer", "tower", "prompt", "context")
        return
    assert image_count == sum(counts)
    event(f"expanded (tower={use_tower})")
    expected = out["image_lengths"].tolist() if image_count else []
    if not use_tower:
        assert expected == lengths
    assert all(1 <= n <= tower.dove.config.max_tokens for n in expected)
    image_id = processor.image_token_id
    found = iter(expected)
    for row, markers in zip(out["input_ids"], counts):
        # Each marker became one contiguous run of exactly its image's token count, in order.
        runs = [len(m.group()) for m in re.finditer(r"1+", "".join("1" if t == image_id else "0" for t in row.tolist()))]
        want = [next(found) for _ in range(markers)]
        assert sum(runs) == sum(want)
        assert runs == want or len(runs) < len(want)  # adjacent markers merge into one run
    assert len(out["image_queries"]) == image_count
    assert all(q is None or (isinstance(q, str) and q == q.strip() and q) for q in out["image_queries"])


# Damaged weights -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, models):
    path = tmp_path_factory.mktemp("weights") / "model"
    models["plain"].save_pretrained(path)
    return path


@settings(FUZZ, max_examples=max(10, EXAMPLES // 2))
@given(data=st.data())
def test_damaged_safetensors_never_crash_inside_torch(saved_model, tmp_path_factory, data):
    weights = (saved_model / "model.safetensors").read_bytes()
    header = struct.unpack("<Q", weights[:8])[0]
    damage = data.draw(st.sampled_from(["flip_header", "truncate", "length", "garbage_tail"]))
    blob = bytearray(weights)
    if damage == "flip_header":
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, header + 7))] = data.draw(st.integers(0, 255))
    elif damage == "truncate":
        blob = blob[: data.draw(st.integers(0, len(weights) - 1))]
    elif damage == "length":
        blob[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    else:
        blob[data.draw(st.integers(header + 8, len(weights) - 8)):] = b"\xff" * 8  # NaN payload
        blob = blob[: len(weights)]
    target = tmp_path_factory.mktemp("damaged")
    for name in os.listdir(saved_model):
        if name != "model.safetensors":
            (target / name).write_bytes((saved_model / name).read_bytes())
    (target / "model.safetensors").write_bytes(bytes(blob))
    note(damage)
    try:
        with no_hang():
            DoveModel.from_pretrained(target)
    except (ValueError, FileNotFoundError) as err:
        event(f"{damage}: refused")
        assert str(target) in str(err), err
    else:
        event(f"{damage}: loaded (harmless damage)")


# The local lmms-eval task (eval/tasks/dove_vqa/utils.py) ----------------------------------------------------------
def _task_utils():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "eval" / "tasks" / "dove_vqa" / "utils.py"
    if not path.is_file():
        pytest.skip("the dove_vqa task is not in this checkout")
    spec = importlib.util.spec_from_file_location("dove_vqa_task_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIELD = st.one_of(st.none(), st.just(""), st.text(max_size=30), st.integers(-5, 5))


VALID_RECORD = st.fixed_dictionaries({"id": st.integers(0, 99), "image": st.sampled_from(["good", "good", "corrupt"]),
                                      "question": st.text(min_size=1, max_size=40),
                                      "answer": st.one_of(st.text(min_size=1, max_size=20), st.integers(0, 9))})
ANY_RECORD = st.fixed_dictionaries({}, optional={"id": FIELD, "image": st.sampled_from(
    ["good", "corrupt", "missing", "folder", None, ""]), "question": FIELD, "answer": FIELD})


@FUZZ
@given(records=st.lists(st.one_of(VALID_RECORD, VALID_RECORD, VALID_RECORD, ANY_RECORD), max_size=4),
       prediction=st.one_of(st.text(max_size=40), st.sampled_from(["Two.", "the Red circle", "", "\n\t"])),
       pre=st.text(max_size=10), post=st.text(max_size=10))
def test_task_loader_validates_records_and_scores_anything(task_files, records, prediction, pre, post):
    utils = _task_utils()
    records = [dict(r, image=task_files[r["image"]]) if r.get("image") in task_files else r for r in records]
    note(repr(records))
    try:
        with no_hang():
            utils.validate_records(records, "fuzzed data")
    except (ValueError, FileNotFoundError) as err:
        assert "fuzzed data" in str(err) and (not records or "record" in str(err)), err
        event(f"refused: {type(err).__name__}")
        return
    event("valid records")
    for record in records:
        text = utils.dove_vqa_doc_to_text(record, {"pre_prompt": pre, "post_prompt": post})
        assert text == f"{pre}{record['question']}{post}"
        score = utils.dove_vqa_process_results(record, [prediction])
        assert score["vqa_accuracy"] in (0.0, 100.0)
        assert utils.dove_vqa_process_results(record, [str(record["answer"])])["vqa_accuracy"] == 100.0
        try:
            with no_hang():
                (image,) = utils.dove_vqa_doc_to_visual(record)
        except OSError as err:  # PIL's UnidentifiedImageError names the file
            assert record["image"] in str(err), err
            event("corrupt image refused")
            continue
        assert image.mode == "RGB" and image.size == (8, 6)


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    Image.new("RGB", (8, 6), (10, 200, 30)).save(root / "good.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "folder").mkdir()
    return {"good": str(root / "good.png"), "corrupt": str(root / "corrupt.png"), "missing": str(root / "gone.png"),
            "folder": str(root / "folder")}
