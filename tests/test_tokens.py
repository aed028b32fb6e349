import pytest
import torch

from ivideogpt.tokens import TokenLayout


def layout(c: int, grid: int = 16) -> TokenLayout:
    return TokenLayout(
        context_length=c,
        context_tokens=grid * grid,
        future_tokens=16,
        context_codebook_size=8192,
        future_codebook_size=8192,
    )


def test_published_layout_two_context_frames() -> None:
    lay = layout(2)
    assert lay.sequence_length(16) == 751
    assert lay.prelude_length == 513
    assert lay.scf_positions() == [256]
    assert lay.sdf_positions(14) == [513 + 17 * i for i in range(14)]
    assert (lay.scf_id, lay.sdf_id, lay.vocab_size) == (16384, 16385, 16386)


def test_published_layout_one_context_frame() -> None:
    lay = layout(1)
    assert lay.sequence_length(16) == 511
    assert lay.scf_positions() == []
    assert lay.sdf_position(0) == 256


def test_build_places_separators_and_split_inverts() -> None:
    lay = layout(2, grid=4)
    ctx = torch.randint(0, 8192, (3, 2, 16))
    fut = torch.randint(0, 8192, (3, 5, 16))
    seq = lay.build(ctx, fut)
    assert seq.shape == (3, lay.sequence_length(7))
    for p in lay.scf_positions():
        assert (seq[:, p] == lay.scf_id).all()
    for p in lay.sdf_positions(5):
        assert (seq[:, p] == lay.sdf_id).all()
    body = seq[:, lay.prelude_length :].reshape(3, 5, 17)[:, :, 1:]
    assert ((body >= lay.future_offset) & (body < lay.scf_id)).all()
    ctx2, fut2 = lay.split(seq)
    assert torch.equal(ctx2, ctx) and torch.equal(fut2, fut)
    assert lay.last_token_positions(5) == [p + 16 for p in lay.sdf_positions(5)]


def test_split_rejects_bad_length_and_clamps_stray_ids() -> None:
    lay = layout(1, grid=4)
    with pytest.raises(ValueError, match="does not fit"):
        lay.split(torch.zeros(1, 16 + 5, dtype=torch.long))
    seq = lay.build(torch.zeros(1, 1, 16, dtype=torch.long), torch.zeros(1, 1, 16, dtype=torch.long))
    seq[0, -1] = lay.sdf_id  # a sampled separator inside a frame
    assert lay.split(seq)[1][0, 0, -1] == lay.future_codebook_size - 1


def test_max_future_frames() -> None:
    assert layout(2).max_future_frames(1024) == 30
