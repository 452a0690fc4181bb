"""Fixtures of the `llava_patch` tests: a tiny Q-DOVE checkpoint whose lengths differ between images and
queries, a tiny byte-level text tokenizer, and the `requires_llava` marker. Everything is built locally."""

import pytest
import torch

from dove_vlm import DoveModel, preset_config
from dove_vlm.query_tokenizer import default_query_tokenizer
from tests.conftest import MICRO_OVERRIDES

try:
    import llava.model.llava_arch  # noqa: F401

    LLAVA_IMPORT_ERROR = None
except ImportError as err:  # absent, or PyPI's empty `llava` placeholder
    LLAVA_IMPORT_ERROR = err

requires_llava = pytest.mark.skipif(
    LLAVA_IMPORT_ERROR is not None,
    reason=f"the original LLaVA code base (haotian-liu/LLaVA) is not importable ({LLAVA_IMPORT_ERROR}); "
    "install it with `pip install --no-deps llava-torch` to run this test",
)

# Lengths the tiny tower gives the four `tower_images` with null queries (its EOS head is fitted to them).
TARGET_LENGTHS = (2, 5, 9, 13)
TEXTS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "What colour is the square? Is there a red circle? How many shapes are there? Where is the blue triangle?",
    "The square is green. Yes. There are three shapes. It is on the left. USER ASSISTANT Human Assistant",
]


@pytest.fixture(scope="session")
def tower_images():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture(scope="session")
def dove_dir(tmp_path_factory, tower_images):
    """A saved micro Q-DOVE model. A random model ends every image at the same slot, so its EOS head is fitted
    (least squares on its own generator states) to end the four test images at `TARGET_LENGTHS`; queries then
    change the lengths too."""
    query_tokenizer = default_query_tokenizer(num_scenes=20)
    torch.manual_seed(0)
    config = preset_config("tiny", **MICRO_OVERRIDES, query_vocab_size=len(query_tokenizer), query_max_length=8)
    model = DoveModel(config).eval()
    model.set_query_tokenizer(query_tokenizer)
    n = config.max_tokens
    with torch.no_grad():
        hidden = model.encode(tower_images, num_tokens=n, output_hidden_states=True).hidden_states
        ends = torch.tensor(TARGET_LENGTHS)
        target = torch.where(torch.arange(n)[None] + 1 >= ends[:, None], 4.0, -4.0).reshape(-1, 1)
        design = torch.cat([hidden.reshape(-1, hidden.shape[-1]), torch.ones(hidden.shape[0] * n, 1)], 1)
        solution = torch.linalg.lstsq(design, target).solution
        model.eos_head.weight.copy_(solution[:-1].T)
        model.eos_head.bias.copy_(solution[-1])
        assert model.encode(tower_images).lengths.tolist() == list(TARGET_LENGTHS)
    path = tmp_path_factory.mktemp("dove") / "qdove"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_tokenizer():
    """A small byte-level BPE tokenizer (exact decode), with Llama's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")
