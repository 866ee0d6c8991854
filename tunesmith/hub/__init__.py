"""Public checkpoints in other libraries' layouts, run by tunesmith's own models.

A directory written by transformers (MusicGen) or diffusers (Stable Audio Open) has no
tunesmith ``generator_type``; :func:`detect_format` recognises it from the files the other
library writes, and :func:`load_public` maps its weights into a tunesmith generator, so every
sampler, control and speed-up of tunesmith applies to it.  One module per format holds its
key table (``musicgen_keys``, ``stable_audio_keys``) and one its generator;
:func:`tunesmith.checkpoint.detect_format` tells the layouts apart.

Only safetensors are read: pickled weights (audiocraft's ``state_dict.bin``, a transformers
``pytorch_model.bin``) can run code when loaded, so they are refused with that reason.
"""
