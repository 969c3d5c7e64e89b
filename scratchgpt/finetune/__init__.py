"""Fine-tuning a pretrained GPT: text classification (chapter 6) and instruction following (chapter 7).

Both start from a pretrained model (GPT-2's weights, a run of `scratchgpt train`, or a small
BPE model `pretrain_base` trains on our corpora) and train part of it, or LoRA adapters
(appendix E, scratchgpt.lora), with AdamW on the trainable parameters only.

Chapter 6, classification:
    data = corpus_passages_dataset(per_class=300)            # or load_csv_dataset("spam.csv")
    model = add_classification_head(model, len(data.labels)) # score: emb_dim -> num_classes
    model.freeze(trainable_prefixes(model, "last-block"))    # last block, final norm, head
    history = train_classifier(model, tok, data, epochs=5)

    The class is read off the hidden state of the *last real token* of each text: texts are
    padded at the end (with <|endoftext|>, as the book does, or id 0 for a character tokenizer,
    which has none) and, attention being causal, a token never sees the padding after it. The
    book takes the last position of the padded batch instead, which for every text but the
    longest is a pad token (that works too, the pad attends to the whole text, but the answer
    then depends on how much padding a text got); we keep the lengths and take position
    length - 1, as Hugging Face's GPT2ForSequenceClassification does. Padding is per batch.

Chapter 7, instruction following:
    entries = load_instruction_json("instruction-data.json") # or wikipedia_instructions()
    inputs, targets = collate_instructions([encode_instruction(e, tok) for e in batch], tok.eot_id)
    history = train_instructions(model, tok, train, val, epochs=2)

    The Alpaca prompt (format_input) + "### Response:" is the prompt; the output and one
    <|endoftext|> are the response. The collate pads with <|endoftext|>, shifts the targets by
    one and sets ignore_index (-100) on every target inside the prompt and on the padding
    after the first <|endoftext|>, so the loss is the response's alone.

Frozen parameters: the model computes no gradient for them (GPTModel.set_trainable), and
`scratchgpt.optim.TrainableParams` hands AdamW only the trainable ones, packed into a buffer of
their own: a frozen weight is never updated nor decayed, and AdamW keeps moments only for what
trains (AdamW(model) on a model with frozen parameters raises a ValueError saying so).
"""
from scratchgpt.classifier import add_classification_head  # noqa: F401
from scratchgpt.finetune.classify import *  # noqa: F401,F403
from scratchgpt.finetune.commands import cmd_finetune_cls, cmd_finetune_sft, main, register_cli  # noqa: F401
from scratchgpt.finetune.common import *  # noqa: F401,F403
from scratchgpt.finetune.common import _prepare_trainable  # noqa: F401
from scratchgpt.finetune.instruct import *  # noqa: F401,F403
from scratchgpt.optim import TrainableParams  # noqa: F401
