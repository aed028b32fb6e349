import pytest
import torch

from ivideogpt.sampling import SamplingParams, draw_uniforms, sample_tokens


def test_greedy_is_argmax() -> None:
    logits = torch.randn(5, 50)
    assert torch.equal(sample_tokens(logits, SamplingParams(greedy=True), None), logits.argmax(-1))


def test_top_k_only_draws_the_k_best() -> None:
    logits = torch.randn(1, 100).repeat(2000, 1)
    ids = sample_tokens(logits, SamplingParams(top_k=5), torch.rand(2000))
    assert set(ids.tolist()) == set(logits[0].topk(5).indices.tolist())


def test_distribution_follows_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0]]).repeat(20000, 1)
    ids = sample_tokens(logits, SamplingParams(top_k=0), torch.rand(20000, generator=torch.Generator().manual_seed(1)))
    freq = torch.bincount(ids, minlength=3).float() / 20000
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.02)


def test_rows_do_not_depend_on_their_batch() -> None:
    logits = torch.randn(4, 64)
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    together = sample_tokens(logits, SamplingParams(), draw_uniforms(gens))
    for i in range(4):
        alone = sample_tokens(logits[i : i + 1], SamplingParams(), draw_uniforms([torch.Generator().manual_seed(i)]))
        assert alone.item() == together[i].item()


def test_restrict_to_future_codes_masks_other_ids() -> None:
    logits = torch.zeros(100, 20)
    logits[:, :5] = 10.0  # the model prefers ids outside the allowed range
    ids = sample_tokens(logits, SamplingParams(restrict_to_future_codes=True), torch.rand(100), allowed=(8, 16))
    assert ((ids >= 8) & (ids < 16)).all()


def test_bad_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0).validate()
