"""The token LM: cached decoding equals the full forward, guidance, seeds, prompts, long outputs."""

import pytest
import torch

from tunesmith.conditioning.beat import CLOCK_DIM, beat_clock
from tunesmith.conditioning.key import KEY_DIM, key_vector
from tunesmith.lm.decode import decode_window, generate_tokens
from tunesmith.conditioning.conditions import ConditionDropout, Conditioning, drop_conditions
from tunesmith.lm.model import LMConfig, TokenLM
from tunesmith.lm.patterns import layout, to_sequence
from tunesmith.lm.sampling import apply_cfg

K, N, TEXT_DIM = 3, 16, 8



pytestmark = pytest.mark.usefixtures("one_thread")

def tiny(conditioning="cross", melody=False, pattern="delay", max_frames=32, beat=False, key=False) -> TokenLM:
    torch.manual_seed(0)
    cfg = LMConfig(num_codebooks=K, codebook_size=N, dim=32, pattern=pattern, conditioning=conditioning,
                   backbone_config={"num_layers": 2, "num_heads": 4}, text_dim=TEXT_DIM, max_text_tokens=6,
                   melody=melody, max_frames=max_frames, beat_clock=beat, key_input=key)
    model = TokenLM(cfg).eval()
    for proj in (model.beat_proj, model.key_proj):  # as if trained: the zero initialisation would hide a
        if proj is not None:  # clock read at the wrong step, or a key that never arrives
            torch.nn.init.normal_(proj.weight)
    return model


def conditions(B=2, frames=10, melody=False, beat=False, key=False) -> Conditioning:
    g = torch.Generator().manual_seed(1)
    text = torch.randn(B, 5, TEXT_DIM, generator=g)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[-1, 3:] = False
    mel = None
    if melody:
        mel = torch.nn.functional.one_hot(torch.randint(0, 12, (B, frames), generator=g), 12).transpose(1, 2).float()
    clock = None
    if beat:  # a beat every 7.5 frames in the first row, none in the second
        clock = torch.stack([beat_clock(400.0, frames, 50.0), torch.zeros(CLOCK_DIM, frames)])[:B]
    keys = torch.stack([key_vector(9, "minor"), torch.zeros(KEY_DIM)])[:B] if key else None  # A minor, none
    return Conditioning(text, mask, mel, clock, keys)


def cached_logits(model: TokenLM, steps: torch.Tensor, cond: Conditioning | None, prefill: int) -> torch.Tensor:
    """Logits of every step computed the decoding way: a prefill, then one position at a time."""
    prefix, cross, cross_mask = model.condition(cond, steps.shape[0])
    frames = cond.beat.shape[-1] if cond is not None and cond.beat is not None else 0
    added = model.step_inputs(cond, frames)
    P = 0 if prefix is None else prefix.shape[1]
    S = steps.shape[2]
    state = model.backbone.allocate_state(steps.shape[0], P + S, "cpu", torch.float32)
    outs = [model.backbone.step(model.sequence_input(steps[:, :, :prefill], prefix, added), state, cross, cross_mask)[:, P:]]
    for s in range(prefill, S - 1):
        x = model.embed_steps(steps[:, :, s : s + 1])
        if added is not None:
            x = x + (added if added.shape[1] == 1 else added[:, s + 1 : s + 2])
        outs.append(model.backbone.step(x, state, cross, cross_mask))
    return model.logits(torch.cat(outs, 1))


@pytest.mark.parametrize(
    "conditioning,melody,use_cond,beat,key",
    [("cross", False, False, False, False), ("cross", False, True, False, False), ("prefix", False, True, False, False),
     ("cross", True, True, False, False), ("prefix", True, True, False, False), ("cross", False, True, True, False),
     ("prefix", True, True, True, False), ("cross", False, True, False, True), ("cross", False, True, True, True)],
)
def test_cached_decoding_equals_full_forward(conditioning, melody, use_cond, beat, key):
    model = tiny(conditioning, melody, beat=beat, key=key)
    T = 10
    tokens = torch.randint(0, N, (2, K, T), generator=torch.Generator().manual_seed(2))
    steps = to_sequence(tokens, layout("delay", K, T), fill=N)
    cond = conditions(frames=T, melody=melody, beat=beat, key=key) if use_cond else None
    with torch.no_grad():
        full = model(steps, cond)
        for prefill in (0, 4):
            torch.testing.assert_close(cached_logits(model, steps, cond, prefill), full, atol=1e-4, rtol=0)


def test_logits_are_causal_in_steps():
    model = tiny()
    steps = torch.randint(0, N, (1, K, 12))
    changed = steps.clone()
    changed[:, :, 7:] = (changed[:, :, 7:] + 1) % N
    with torch.no_grad():
        a, b = model(steps), model(changed)
    torch.testing.assert_close(a[:, :, :8], b[:, :, :8])  # step s sees steps < s only
    assert not torch.allclose(a[:, :, 8:], b[:, :, 8:])


def test_cfg_scale_one_equals_conditional_and_guidance_is_one_batched_forward():
    model = tiny()
    cond = conditions()
    for temperature in (0.0, 1.0):
        plain = decode_window(model, 8, cond, batch_size=2, cfg_scale=None, temperature=temperature,
                              generator=torch.Generator().manual_seed(3))
        guided = decode_window(model, 8, cond, batch_size=2, cfg_scale=1.0, temperature=temperature,
                               generator=torch.Generator().manual_seed(3))
        assert torch.equal(plain, guided)
    # the guided logits are uncond + s (cond - uncond) of two separate forwards
    steps = torch.randint(0, N, (2, K, 6))
    with torch.no_grad():
        c, u = model(steps, cond), model(steps, cond.null())
        both = model(torch.cat([steps, steps]), cond.cat(cond.null()))
    torch.testing.assert_close(apply_cfg(both[:2], both[2:], 3.0), u + 3.0 * (c - u), atol=1e-4, rtol=0)
    assert not torch.allclose(c, u)  # the text matters


def test_same_seed_same_tokens_and_seed_matters():
    model = tiny(melody=True)
    cond = conditions(frames=12, melody=True)
    a = generate_tokens(model, 12, cond, seed=5, cfg_scale=3.0, top_k=8)
    b = generate_tokens(model, 12, cond, seed=5, cfg_scale=3.0, top_k=8)
    c = generate_tokens(model, 12, cond, seed=6, cfg_scale=3.0, top_k=8)
    assert a.shape == (2, K, 12) and a.dtype == torch.long and 0 <= int(a.min()) and int(a.max()) < N
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("pattern", ["delay", "parallel", "flattening", "coarse_first"])
def test_prompt_is_kept_and_continued(pattern):
    model = tiny(pattern=pattern)
    prompt = torch.randint(0, N, (2, K, 5), generator=torch.Generator().manual_seed(4))
    out = generate_tokens(model, 11, conditions(), prompt=prompt, seed=0)
    assert out.shape == (2, K, 11)
    assert torch.equal(out[..., :5], prompt)


def test_windowed_continuation_beyond_the_context():
    model = tiny(max_frames=16)
    cond = conditions(frames=40, melody=False)
    out = generate_tokens(model, 40, cond, seed=0, keep_frames=6, cfg_scale=2.0)
    assert out.shape == (2, K, 40)
    # the second window was prompted by frames 10..15 of the first, so it reproduces them;
    # decoding the first 16 frames alone gives the same start (same seed, same draws)
    first = generate_tokens(model, 16, cond, seed=0, cfg_scale=2.0)
    assert torch.equal(out[..., :16], first)


def test_greedy_is_deterministic_argmax():
    model = tiny()
    a = generate_tokens(model, 6, conditions(), temperature=0.0, seed=0)
    b = generate_tokens(model, 6, conditions(), temperature=0.0, seed=99)
    assert torch.equal(a, b)


def test_condition_dropout_is_per_example_and_separate():
    cond = conditions(B=400, frames=4, melody=True)
    cond = Conditioning(cond.text, cond.text_mask, cond.melody, beat_clock(120.0, 4, 50.0).expand(400, -1, -1),
                        key_vector(2, "major").expand(400, -1))
    dropped = drop_conditions(cond, ConditionDropout(text=0.25, melody=0.75, beat=0.5, key=0.5), generator=torch.Generator().manual_seed(0))
    text_gone = ~dropped.text_mask.any(1)
    melody_gone = dropped.melody.sum((1, 2)) == 0
    beat_gone = dropped.beat.abs().sum((1, 2)) == 0
    assert 0.15 < text_gone.float().mean() < 0.35 and 0.65 < melody_gone.float().mean() < 0.85
    assert 0.4 < beat_gone.float().mean() < 0.6
    key_gone = dropped.key.abs().sum(1) == 0
    assert 0.4 < key_gone.float().mean() < 0.6
    assert (text_gone != melody_gone).any() and (beat_gone != text_gone).any()  # independent draws
    assert (key_gone != beat_gone).any() and (key_gone != text_gone).any()


@pytest.mark.parametrize("pattern", ["delay", "parallel", "flattening", "coarse_first"])
def test_beat_clock_decoding_agrees_with_teacher_forcing(pattern):
    """Greedy decoding, which adds the clock one step at a time, picks the argmax of the
    teacher-forced logits, which add it all at once: the clock reaches the same steps."""
    model = tiny(pattern=pattern, beat=True)
    T = 9
    cond = conditions(frames=T, beat=True)
    with torch.no_grad():
        out = generate_tokens(model, T, cond, cfg_scale=1.0, temperature=0.0)
        table = layout(pattern, K, T)
        steps = to_sequence(out, table, fill=N)
        again = model(steps, cond).argmax(-1)
    valid = (table >= 0).t()
    assert torch.equal(torch.where(valid, again, steps), steps)
    no_clock = Conditioning(cond.text, cond.text_mask, None, torch.zeros_like(cond.beat))
    without = generate_tokens(model, T, no_clock, cfg_scale=1.0, temperature=0.0)
    assert not torch.equal(without[0], out[0])  # the clock matters ...
    assert torch.equal(without[1], out[1])  # ... and the second row had none


def test_unguided_conditions_stay_in_the_unconditional_rows():
    cond = conditions(frames=6, beat=True)
    null = cond.null(keep=("beat",))
    assert torch.equal(null.beat, cond.beat) and not null.text_mask.any()
    with pytest.raises(ValueError, match="unknown conditions"):
        cond.null(keep=("tempo",))
    # keeping every condition makes both halves equal: guidance is then the conditional model
    model = tiny(beat=True)
    everything = ("text", "melody", "beat")
    guided = generate_tokens(model, 6, cond, cfg_scale=3.0, temperature=0.0, unguided=everything)
    assert torch.equal(guided, generate_tokens(model, 6, cond, cfg_scale=1.0, temperature=0.0))
    assert not torch.equal(guided, generate_tokens(model, 6, cond, cfg_scale=3.0, temperature=0.0))


def test_the_key_reaches_every_step_in_decoding_and_guidance():
    model = tiny(key=True)
    T = 8
    cond = conditions(frames=T, key=True)
    with torch.no_grad():
        out = generate_tokens(model, T, cond, cfg_scale=1.0, temperature=0.0)
        steps = to_sequence(out, layout("delay", K, T), fill=N)
        again = model(steps, cond).argmax(-1)
    valid = (layout("delay", K, T) >= 0).t()
    assert torch.equal(torch.where(valid, again, steps), steps)  # one step at a time = all at once
    no_key = Conditioning(cond.text, cond.text_mask, None, None, torch.zeros_like(cond.key))
    without = generate_tokens(model, T, no_key, cfg_scale=1.0, temperature=0.0)
    assert not torch.equal(without[0], out[0]) and torch.equal(without[1], out[1])  # row 1 named no key
    assert torch.equal(cond.null(keep=("key",)).key, cond.key) and cond.null().key.abs().sum() == 0
    with pytest.raises(ValueError, match="takes a key"):
        model(steps, Conditioning(cond.text, cond.text_mask))
    with pytest.raises(ValueError, match="no key input"):
        tiny()(steps, cond)


def test_a_zero_initialised_clock_leaves_the_model_unchanged():
    plain, clocked = tiny(), tiny(beat=True)
    torch.nn.init.zeros_(clocked.beat_proj.weight)
    clocked.load_state_dict(plain.state_dict(), strict=False)
    T = 8
    steps = to_sequence(torch.randint(0, N, (2, K, T)), layout("delay", K, T), fill=N)
    with torch.no_grad():
        torch.testing.assert_close(clocked(steps, conditions(frames=T, beat=True)), plain(steps, conditions(frames=T)))


def test_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match="steps must be"):
        model(torch.zeros(1, K + 1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.full((1, K, 4), N + 1))
    with pytest.raises(ValueError, match="no melody"):
        model(torch.zeros(1, K, 4, dtype=torch.long), conditions(B=1, frames=4, melody=True))
    with pytest.raises(ValueError, match="no beat clock"):
        model(torch.zeros(1, K, 6, dtype=torch.long), conditions(B=1, frames=4, beat=True))
    with pytest.raises(ValueError, match="has a beat clock"):
        tiny(beat=True)(torch.zeros(1, K, 6, dtype=torch.long), conditions(B=1, frames=4))
    with pytest.raises(ValueError, match="pattern steps"):
        tiny(beat=True)(torch.zeros(1, K, 7, dtype=torch.long), conditions(B=1, frames=4, beat=True))
    with pytest.raises(ValueError, match="prompt has"):
        generate_tokens(model, 4, prompt=torch.zeros(1, K, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_frames"):
        generate_tokens(model, 0)
    with pytest.raises(Exception, match="unknown backbone"):
        LMConfig(backbone="rnn")


@pytest.mark.slow
def test_melody_conditioning_is_learned_and_followed():
    """Tokens that spell out the melody's pitch class: a tiny melody model learns to read
    the chroma prefix, and its samples follow a new reference far above chance (1/12)."""
    T = 16
    torch.manual_seed(0)
    model = TokenLM(LMConfig(num_codebooks=2, codebook_size=12, dim=64, backbone_config={"num_layers": 2, "num_heads": 4},
                             text_dim=TEXT_DIM, melody=True, max_frames=T))
    g = torch.Generator().manual_seed(0)

    def batch(B):
        pitch = torch.randint(0, 12, (B, T), generator=g)
        melody = torch.nn.functional.one_hot(pitch, 12).transpose(1, 2).float()
        return torch.stack([pitch, (pitch + 7) % 12], 1), melody

    table = layout("delay", 2, T)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(250):
        tokens, melody = batch(16)
        steps = to_sequence(tokens, table, fill=12)
        loss = model.loss(steps, (table >= 0).t(), drop_conditions(Conditioning(melody=melody), ConditionDropout(text=0.0, melody=0.1, beat=0.0, key=0.0)))[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    tokens, melody = batch(8)
    _, unrelated = batch(8)
    out = generate_tokens(model, T, Conditioning(melody=melody), cfg_scale=3.0, seed=0)
    follows = (out[:, 0] == tokens[:, 0]).float().mean()
    by_chance = (out[:, 0] == unrelated.argmax(1)).float().mean()
    assert follows > 0.8 and by_chance < 0.3, (follows, by_chance)


@pytest.mark.slow
def test_beat_clock_is_learned_and_followed():
    """Onsets (token 1) fall on beats at random, half the beats: only the clock says where
    the beats are.  A tiny clocked model learns to read it, and its samples put their
    onsets on the beats of whatever clock it is given."""
    T, rate = 40, 50.0
    periods = torch.tensor([5, 8, 10])  # frames per beat: 600, 375 and 300 BPM at 50 frames/s
    torch.manual_seed(0)
    model = TokenLM(LMConfig(num_codebooks=2, codebook_size=2, dim=64, backbone_config={"num_layers": 2, "num_heads": 4},
                             text_dim=TEXT_DIM, max_frames=T, beat_clock=True))
    g = torch.Generator().manual_seed(0)
    frames = torch.arange(T)

    def clocks(period: torch.Tensor) -> torch.Tensor:
        return torch.stack([beat_clock(60.0 * rate / int(p), T, rate) for p in period])

    def batch(B):
        period = periods[torch.randint(0, 3, (B,), generator=g)]
        on_beat = frames[None] % period[:, None] == 0
        onsets = (on_beat & (torch.rand(B, T, generator=g) < 0.5)).long()
        return torch.stack([onsets, onsets], 1), clocks(period)

    table = layout("delay", 2, T)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(250):
        tokens, clock = batch(16)
        loss = model.loss(to_sequence(tokens, table, fill=2), (table >= 0).t(), Conditioning(beat=clock))[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for period in (8, 5):
        out = generate_tokens(model, T, Conditioning(beat=clocks(torch.full((8,), period))), cfg_scale=1.0, seed=0)
        onsets = out[:, 0].bool()
        on_beat = frames % period == 0
        assert onsets[:, ~on_beat].float().mean() < 0.03, period  # nothing off the beat
        assert 0.3 < onsets[:, on_beat].float().mean() < 0.7, period  # about half the beats
