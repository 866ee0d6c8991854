"""Inference-time control by noise optimisation (DITTO, Novack et al. 2024; DITTO-2).

    features.py   differentiable features of audio and the losses against a target
                  (intensity, melody, structure, loop, masked reconstruction), and the
                  targets as a user writes them ("0:-30,5:-10", "AABA")
    optimize.py   the loop: Adam on the initial noise through a checkpointed DDIM sampler and
                  the decoder, the noise kept on the Gaussian shell
"""
