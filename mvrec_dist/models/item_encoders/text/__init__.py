"""Title-text encoders: ``forward(ids[U, T]) -> [U, out_dim]`` over the token ids ingestion stored.

``TextEncoder`` (``encoder``) is a ``ContentEncoder`` of kind ``'tokens'``: a BERT (``bert``, plain
torch) whose pooled, normalised last hidden states are the item feature, as
sentence-transformers/all-MiniLM-L6-v2 computes its sentence embedding. Importing this package
registers the ``minilm`` builder (``minilm``) in ``CONTENT_ENCODERS``; it loads checked pretrained
weights from an installed package (``mvrec_dist.data.pretrained_text``).
"""

from mvrec_dist.models.item_encoders.text.bert import (Bert, BertEmbeddings, BertLayer, attention_bias, bert_key_map,
                                                       init_bert_, run_layers)
from mvrec_dist.models.item_encoders.text.encoder import PAD_ID, Adapter, Pooling, TextEncoder
from mvrec_dist.models.item_encoders.text.flops import layer_flops, text_encoder_flops, text_train_step_flops
from mvrec_dist.models.item_encoders.text.minilm import (CONFIG_JSON_KEYS, load_pretrained_text, minilm,
                                                         pretrained_size_problems)

__all__ = [
    "TextEncoder", "Pooling", "Adapter", "PAD_ID",
    "Bert", "BertEmbeddings", "BertLayer", "run_layers", "attention_bias", "bert_key_map", "init_bert_",
    "minilm", "load_pretrained_text", "pretrained_size_problems", "CONFIG_JSON_KEYS",
    "layer_flops", "text_encoder_flops", "text_train_step_flops",
]
