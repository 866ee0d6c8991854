"""Two-stage generation (MeLoDy; the SSM text-to-music paper's hybrid): a token LM plans coarse
tokens, a dual-path diffusion model (DPD) renders VAE latents from them.

    angle.py         MeLoDy's angle-parameterised velocity: objective, multi-chunk angles, sampler
    dpd.py           the dual-path diffusion network (fine path in segments, coarse path across)
    tokens.py        coarse tokens: which codebooks, frame stacking for stage 1, time alignment
    render.py        stage 2 as a sampler over the DPD (angle or the existing v/EDM samplers, CFG)
    continuation.py  window-by-window planning and segment-by-segment rendering with flat memory
    generator.py     the ``two-stage`` generator (generators layer)
    train.py         the DPD's training task through the one engine (training layer)
"""
