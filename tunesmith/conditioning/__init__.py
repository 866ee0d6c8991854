"""Conditioning: what a generator is told, from a prompt or a corpus clip, as tensors.

    conditions.py   Conditioning (one type for every family), ConditionDropout and drop_conditions,
                    from_prompts (generation) and from_clip (training)
    prompt.py       the one prompt parser: tempo, key and instruments a prompt names
    text.py         frozen text encoders (MiniLM offline, T5) and get_text_encoder
    attributes.py   tempo, key and instrument tokens in the text encoder's space
    instruments.py  the instrument vocabulary and its multi-hot vector
    beat.py         the beat clock (per frame)
    key.py          the key vector
    melody.py       a reference's dominant chroma (melody conditioning)
"""
