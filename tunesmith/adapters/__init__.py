"""LoRA adapters: fine-tune a generator on a folder of your audio, ship a few MB, merge or not.

    tunesmith finetune DIR --model tunesmith-small-dit --out my-style     # train (adapters.finetune)
    tunesmith.load("my-style")                                          # base + adapter (adapters.generator)
    tunesmith finetune merge my-style --out my-model                     # a full model directory

Modules, lowest layer first: ``lora`` (the low-rank math: which layers, inject with peft,
merge and unmerge with our own few lines), ``directory`` (the adapter directory: our
``config.json`` beside peft's ``adapter_config.json`` + ``adapter_model.safetensors``),
``generator`` (an adapter directory loaded as the base's generator), ``autocaption``,
``data`` and ``finetune`` (training, through the one engine).
"""
