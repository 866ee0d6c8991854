"""Fast inference by distillation (Presto!, Novack et al. 2025): few-step students of a diffusion teacher.

    dmd.py   distribution matching distillation (DMD, Yin et al. 2024; DMD2): the generator's
             distribution-matching loss and the fake-score model's denoising loss, as functions
             over denoisers, so they can be checked on a distribution with a known answer
"""
