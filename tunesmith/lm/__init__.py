"""The token language model (MusicGen): codebook patterns, a swappable backbone, guided decoding.

    patterns.py   tokens (B, K, T) <-> pattern steps; which cells each step predicts
    model.py      LMConfig, TokenLM (K embeddings -> backbone -> K heads)
    backbones/    the Backbone interface and registry; the Transformer (and Mamba)
    sampling.py   guidance, temperature, top-k, top-p
    decode.py     cached, guided, seeded decoding; windowed continuation
    int8.py       int8 linear weights for faster CPU decoding
    data.py       token windows from a frame cache, cached caption states
    train.py      `tunesmith train lm`
    generator.py  the "token-lm" generator: text (+ melody, + audio prompt) -> audio
"""
