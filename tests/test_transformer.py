import pytest
import torch
import torch.nn.functional as F
import transformers

from conftest import small_config
from ivideogpt.checkpoint import convert_official_transformer
from ivideogpt.config import TransformerConfig
from ivideogpt.engine.transformer_steps import TransformerDecode
from ivideogpt.model import WorldModel
from ivideogpt.tokens import TokenLayout
from ivideogpt.transformer import KVCache, WorldModelTransformer, additive_mask, single_query_attention


def make_model(action_dim: int = 3) -> tuple[WorldModelTransformer, TokenLayout]:
    cfg = small_config(action_dim=action_dim)
    trm = WorldModelTransformer(cfg.transformer).eval()
    if trm.action_proj is not None:  # zero-initialised: give actions a real effect
        torch.nn.init.normal_(trm.action_proj.weight, std=0.5)
        torch.nn.init.normal_(trm.action_proj.bias, std=0.5)
    return trm, TokenLayout.from_config(cfg)


def random_sequence(lay: TokenLayout, batch: int, n_future: int) -> torch.Tensor:
    ctx = torch.randint(0, lay.context_codebook_size, (batch, lay.context_length, lay.context_tokens))
    fut = torch.randint(0, lay.future_codebook_size, (batch, n_future, lay.future_tokens))
    return lay.build(ctx, fut)


def incremental(trm: WorldModelTransformer, lay: TokenLayout, ids: torch.Tensor, actions: torch.Tensor):
    """Prefill the prelude and the first sdf, then decode one token at a time."""
    b, length = ids.shape
    c, p = lay.context_length, lay.prelude_length
    n_future = (length - p) // lay.frame_stride
    sdf_at = {pos: i for i, pos in enumerate(lay.sdf_positions(n_future))}
    cache = KVCache.empty(trm.cfg, b)
    first = torch.cat([trm.embed(ids[:, :p]), trm.embed_step(ids[:, p], actions[:, c - 1])[:, None]], dim=1)
    hidden = [trm(first, cache)]
    for pos in range(p + 1, length):
        a = actions[:, c - 1 + sdf_at[pos]] if pos in sdf_at else None
        hidden.append(trm.decode(trm.embed_step(ids[:, pos], a), cache)[:, None])
    hidden = torch.cat(hidden, dim=1)
    last = lay.last_token_positions(n_future)
    return trm.logits(hidden), trm.reward_symlog(hidden[:, last]), cache


@torch.no_grad()
def test_incremental_decoding_matches_full_forward() -> None:
    trm, lay = make_model()
    ids = random_sequence(lay, batch=2, n_future=4)
    actions = torch.randn(2, lay.context_length + 4, 3)
    full_logits, full_rewards = trm.forward_sequence(ids, lay, actions)
    inc_logits, inc_rewards, cache = incremental(trm, lay, ids, actions)
    assert (full_logits - inc_logits).abs().max() <= 1e-5
    assert (full_rewards - inc_rewards).abs().max() <= 1e-5
    assert cache.lengths.tolist() == [ids.shape[1]] * 2
    # the actions really matter: other actions change the logits after the first sdf
    other, _ = trm.forward_sequence(ids, lay, actions + 1)
    assert (other[:, lay.prelude_length :] - full_logits[:, lay.prelude_length :]).abs().max() > 1e-3


@torch.no_grad()
def test_rows_of_different_lengths_match_each_row_alone() -> None:
    trm, lay = make_model(action_dim=0)
    lengths = [lay.prelude_length + 3, lay.prelude_length + 17 * 2 + 5, lay.prelude_length]
    rows = [random_sequence(lay, 1, 3)[0, :n] for n in lengths]
    steps = 6
    nexts = torch.randint(0, lay.vocab_size, (3, steps))

    # batched: one padded prefill, then decode steps where every row advances together
    padded = torch.zeros(3, max(lengths), dtype=torch.long)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    cache = KVCache.empty(trm.cfg, 3)
    last = trm.prefill(padded, cache, n_new=torch.tensor(lengths))
    batched = [trm.logits(last)]
    for s in range(steps):
        batched.append(trm.logits(trm.decode(nexts[:, s], cache)))
    batched = torch.stack(batched, dim=1)

    for i, r in enumerate(rows):
        alone = trm.logits(trm(trm.embed(torch.cat([r, nexts[i]])[None])))[0, len(r) - 1 :]
        assert (batched[i] - alone).abs().max() <= 1e-5, f"row {i}"
    assert cache.lengths.tolist() == [n + steps for n in lengths]


@torch.no_grad()
def test_cache_overflow_is_refused() -> None:
    trm, lay = make_model(action_dim=0)
    cache = KVCache.empty(trm.cfg, 1, capacity=lay.prelude_length + 2)
    trm.prefill(random_sequence(lay, 1, 0), cache)
    trm.decode(torch.tensor([lay.sdf_id]), cache)
    trm.decode(torch.tensor([lay.future_offset]), cache)
    with pytest.raises(ValueError, match="capacity"):
        trm.decode(torch.tensor([lay.future_offset]), cache)


def test_action_free_model_rejects_actions_and_action_model_checks_width() -> None:
    trm, _ = make_model(action_dim=0)
    with pytest.raises(ValueError, match="action-free"):
        trm.embed_step(torch.tensor([1]), torch.zeros(1, 3))
    trm, _ = make_model(action_dim=3)
    with pytest.raises(ValueError, match="3 values"):
        trm.embed_step(torch.tensor([1]), torch.zeros(1, 4))


def test_action_projection_starts_at_zero() -> None:
    model = WorldModel(small_config())
    assert model.transformer.action_proj is not None
    assert model.transformer.action_proj.weight.abs().sum() == 0
    assert model.transformer.action_proj.bias.abs().sum() == 0


@torch.no_grad()
def test_matches_transformers_llama() -> None:

    hf_cfg = transformers.LlamaConfig(
        vocab_size=130,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    for p in hf.parameters():  # RMSNorm weights start at one: perturb everything
        p.add_(torch.randn_like(p) * 0.02)
    ours = WorldModelTransformer(
        TransformerConfig(
            n_layers=3, hidden_size=64, n_heads=4, intermediate_size=160, vocab_size=130, max_positions=256
        )
    ).eval()
    ours.load_state_dict(convert_official_transformer(hf.state_dict(), ours, "hf"), strict=True)
    ids = torch.randint(0, 130, (2, 200))
    theirs = hf(input_ids=ids).logits
    assert (ours.logits(ours(ours.embed(ids))) - theirs).abs().max() <= 1e-4


@pytest.mark.parametrize("scripted", [False, True])
@torch.no_grad()
def test_single_query_attention_matches_sdpa(scripted: bool) -> None:
    fn = torch.jit.script(single_query_attention) if scripted else single_query_attention
    q, k, v = torch.randn(2, 3, 1, 16), torch.randn(2, 3, 37, 16), torch.randn(2, 3, 37, 16)
    assert (fn(q, k, v) - F.scaled_dot_product_attention(q, k, v)).abs().max() <= 1e-5
    lengths = torch.tensor([5, 37])  # row 0 sees its first 5 keys only
    mask = additive_mask(torch.arange(37)[None, :] < lengths[:, None])[:, None, None]  # [2, 1, 1, 37]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (fn(q, k, v, mask) - ref).abs().max() <= 1e-5
    # strided keys (a slot of a bigger pool) and 3-d inputs, as the decode step passes them
    pool = torch.randn(3, 64, 16)
    keys = pool[:, 10:30]
    ref3 = F.scaled_dot_product_attention(q[0], keys, keys)
    assert (fn(q[0], keys, keys) - ref3).abs().max() <= 1e-5


@pytest.mark.parametrize("scripted", [False, True])
@torch.no_grad()
def test_fork_rows_attend_to_the_shared_prefix_and_their_own_suffix(scripted: bool) -> None:
    """Each fork row's attention = SDPA over [prefix; its own suffix], with the prefix and the K suffixes
    strided runs of one pool (the per-head products that read the prefix once must not mix rows up)."""
    trm, _ = make_model()
    h, dh = trm.n_heads, trm.head_dim
    k, prefix, stride, length = 5, 23, 9, 6  # each row has ``length`` suffix tokens, plus the new one
    pool_k, pool_v = torch.randn(h, 200, dh), torch.randn(h, 200, dh)
    parent, start = 7, 80
    q = torch.randn(k, h, dh)
    forks = torch.jit.script(TransformerDecode(trm))._forks if scripted else trm._forks
    out = forks(q, pool_k, pool_v, [0, k, parent, prefix, start, stride, length])
    for row in range(k):
        own = slice(start + row * stride, start + row * stride + length + 1)
        keys = torch.cat([pool_k[:, parent : parent + prefix], pool_k[:, own]], dim=1)  # [H, S, Dh]
        values = torch.cat([pool_v[:, parent : parent + prefix], pool_v[:, own]], dim=1)
        ref = F.scaled_dot_product_attention(q[row][:, None], keys, values)[:, 0]
        assert (out[row] - ref).abs().max() <= 1e-5, row
