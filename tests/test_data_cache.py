"""Frame cache edge cases."""
def test_non_contiguous_frames_are_accepted(tmp_path):
    """Codes usually come as (K, T) and are transposed to (T, K): a view, not a copy."""
    import numpy as np

    from tunesmith.data.cache import FrameCache, write_frame_cache

    codes = np.arange(2 * 7, dtype=np.int64).reshape(2, 7)  # (K, T)
    meta = {"kind": "tokens", "model": "test", "frame_rate": 50.0, "sample_rate": 24000, "channels": 1,
            "num_codebooks": 2}
    write_frame_cache(tmp_path, "train", [(codes.T, {"id": "a", "caption": "c", "tags": {}, "duration": 0.14})], meta)
    item = FrameCache(tmp_path, "train", None)[0]
    assert item["frames"].tolist() == codes.tolist()
