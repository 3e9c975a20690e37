"""A sequence classifier that reads the first token computes its last encoder layer for that token alone.

BERT-family classification heads (BERT's pooler, the RoBERTa / XLM-R / CamemBERT / ELECTRA heads) read
`last_hidden_state[:, 0]` and nothing else. In the last layer every other position's query, attention output,
feed-forward block and LayerNorms feed only outputs that are thrown away. `apply` gives the last layer a forward
that computes the keys and values of every token (the first token attends to all of them) and the rest for the
first token only. The first token's output is the same function of the same inputs, so logits and gradients are
those of the model's own forward up to float rounding (`tests/test_first_token.py`); only the last layer's
dropout draws fewer numbers. On MiniLM-L6 (6 layers, width 384, feed-forward 1,536) that is 10 of the 12 d² matmul
FLOPs per token of one layer in six, forward and backward: about a seventh of the encoder's matmul work.

The saved model is the library's own class with the same weights: this patch lives on the loaded instance.
Attention implementations whose mask is a 4-D tensor or none (sdpa, eager) take the short path; any other mask
(flex_attention's BlockMask, flash-attention's 2-D one) runs the layer's own forward.
"""

from __future__ import annotations

import types
from typing import Any

# heads that read only position 0 of the last hidden state, and the layer class each one's encoder stacks
HEADS = {
    "BertForSequenceClassification": "BertLayer",
    "RobertaForSequenceClassification": "RobertaLayer",
    "XLMRobertaForSequenceClassification": "XLMRobertaLayer",
    "CamembertForSequenceClassification": "CamembertLayer",
    "ElectraForSequenceClassification": "ElectraLayer",
}


def _first_token_forward(self: Any, hidden_states: Any, attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    if attention_mask is not None and not (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4):
        return self._llmtune_full_forward(hidden_states, attention_mask, *args, **kwargs)
    att = self.attention.self
    b, t, _ = hidden_states.shape
    size = att.attention_head_size
    first = hidden_states[:, :1]
    query = att.query(first).view(b, 1, -1, size).transpose(1, 2)
    key = att.key(hidden_states).view(b, t, -1, size).transpose(1, 2)
    value = att.value(hidden_states).view(b, t, -1, size).transpose(1, 2)
    mask = attention_mask[:, :, :1] if attention_mask is not None else None  # the first query's row
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(att.config._attn_implementation, eager_attention_forward)
    out, _ = attend(att, query, key, value, mask, dropout=att.dropout.p if att.training else 0.0,
                    scaling=att.scaling)
    attention_output = self.attention.output(out.reshape(b, 1, -1), first)
    return self.feed_forward_chunk(attention_output)


def apply(model: Any) -> bool:
    """Give `model`'s last encoder layer the first-token forward; True if it applies to this model."""
    layer_class = HEADS.get(type(model).__name__)
    config = model.config
    if layer_class is None or config.is_decoder or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "chunk_size_feed_forward", 0) or config._attn_implementation not in ("sdpa", "eager"):
        return False
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not layers or type(layers[-1]).__name__ != layer_class or hasattr(layers[-1], "_llmtune_full_forward"):
        return False
    last = layers[-1]
    last._llmtune_full_forward = last.forward
    last.forward = types.MethodType(_first_token_forward, last)
    return True
