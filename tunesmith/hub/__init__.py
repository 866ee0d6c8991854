"""Public checkpoints in other libraries' layouts, run by tunesmith's own models.

A directory written by transformers (MusicGen) or diffusers (Stable Audio Open) has no
tunesmith ``generator_type``; :func:`tunesmith.checkpoint.detect_format` recognises it from
the files the other library writes, and ``load_generator`` hands it to this package's loader
for that format (``checkpoint.PUBLIC_FORMATS``), which maps its weights into a tunesmith
generator, so every sampler, control and speed-up of tunesmith applies to it.  One module per
format holds its key table (``musicgen_keys``, ``stable_audio_keys``) and one its generator.

Only safetensors are read: pickled weights (audiocraft's ``state_dict.bin``, a transformers
``pytorch_model.bin``) can run code when loaded, so they are refused with that reason.
"""
