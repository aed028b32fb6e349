import dataclasses

import pytest
import torch
from diffusers.models.autoencoders.vae import Decoder as DiffusersDecoder
from diffusers.models.autoencoders.vae import Encoder as DiffusersEncoder

from conftest import small_config
from ivideogpt.config import TokenizerConfig
from ivideogpt.tokenizer import CompressiveTokenizer
from ivideogpt.vae import CrossAttentionBlock, Decoder, Encoder


def perturb(module: torch.nn.Module) -> None:
    """Random values everywhere (norm weights start at 1 and position embeddings at 0)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def make_tokenizer(**kwargs) -> CompressiveTokenizer:
    tok = CompressiveTokenizer(small_config(**kwargs).tokenizer).eval()
    perturb(tok)
    return tok


@torch.no_grad()
def test_round_trip_shapes_and_pixel_range() -> None:
    tok = make_tokenizer()
    cfg = tok.cfg
    r = cfg.resolution
    ctx = torch.rand(2, 2, 3, r, r)
    fut = torch.rand(2, 3, 3, r, r)
    ids, enc_feats = tok.encode_context(ctx)
    assert ids.shape == (2, 2, cfg.context_tokens) and ids.max() < cfg.context_codebook_size
    fids = tok.encode_future(fut, enc_feats)
    assert fids.shape == (2, 3, cfg.future_tokens) and fids.max() < cfg.future_codebook_size
    frames, dec_feats = tok.decode_context(ids)
    assert frames.shape == ctx.shape and frames.min() >= 0 and frames.max() <= 1
    assert all(f.shape[:2] == (2, 2) for f in dec_feats)
    out = tok.decode_future(fids, dec_feats)
    assert out.shape == fut.shape and out.min() >= 0 and out.max() <= 1


@torch.no_grad()
def test_future_frames_sharing_a_context_decode_as_if_alone() -> None:
    tok = make_tokenizer()
    ids, _ = tok.encode_context(torch.rand(2, 2, 3, 32, 32))
    _, feats = tok.decode_context(ids)
    fids = torch.randint(0, tok.cfg.future_codebook_size, (2, 3, 16))
    together = tok.decode_future(fids, feats)
    for b in range(2):
        for i in range(3):
            alone = tok.decode_future(fids[b : b + 1, i : i + 1], [f[b : b + 1] for f in feats])
            # float sums run in a batch-size dependent order (oneDNN on AVX-512/AMX: 1.4e-5 seen);
            # a pixel's step is 1/255 = 3.9e-3
            assert torch.allclose(alone[0, 0], together[b, i], atol=5e-5)
    # the future decoder really depends on the context features
    other = tok.decode_future(fids, [f.flip(0) for f in feats])
    assert (other - together).abs().max() > 1e-3


def test_straight_through_gradients_reach_encoders_and_codebooks() -> None:
    tok = make_tokenizer()
    tok.train()
    out = tok(torch.rand(2, 2, 3, 32, 32), torch.rand(2, 2, 3, 32, 32))
    loss = (out.context_recon - 0.5).abs().mean() + (out.future_recon - 0.5).abs().mean() + out.vq_loss
    loss.backward()
    for name in (
        "encoder.conv_in.weight",
        "cond_encoder.conv_in.weight",
        "cond_encoder.cross_att_blocks.0.att.in_proj_weight",
        "quant_linear.weight",
        "quantize.embedding.weight",
        "dynamics_quantize.embedding.weight",
        "cond_decoder.cross_att_blocks.0.kv_pos_emb",
    ):
        grad = tok.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_wrong_inputs_are_named() -> None:
    tok = make_tokenizer()
    with pytest.raises(ValueError, match="context_frames"):
        tok.encode_context(torch.rand(1, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="2 context frames"):
        tok.encode_context(torch.rand(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        tok.encode_context(torch.zeros(1, 2, 3, 32, 32, dtype=torch.uint8))


def test_patchify_matches_published_unfold_order() -> None:
    tok = make_tokenizer()
    z = torch.randn(3, tok.cfg.latent_channels, 8, 8)
    p = tok.cfg.patch_size
    ref = z.permute(0, 2, 3, 1).unfold(1, p, p).unfold(2, p, p).permute(0, 1, 2, 4, 5, 3).reshape(3, 16, -1)
    assert torch.equal(tok._patchify(z), ref)
    assert torch.equal(tok._unpatchify(tok._patchify(z)), z)


@torch.no_grad()
def test_cross_attention_matches_multihead_attention_reference() -> None:
    block = CrossAttentionBlock(32, resolution=4, context_frames=2, heads=4, groups=8, dropout=0.1).eval()
    perturb(block)
    z, ctx = torch.randn(6, 32, 4, 4), torch.randn(3, 2, 32, 4, 4)
    # the published computation: frames stacked along H, nn.MultiheadAttention, SiLU after the add
    full = ctx.repeat_interleave(2, dim=0)
    kv = block.kv_norm(full.permute(0, 2, 1, 3, 4).reshape(6, 32, 8, 4)).flatten(2).transpose(1, 2) + block.kv_pos_emb
    q = block.q_norm(z).flatten(2).transpose(1, 2) + block.q_pos_emb
    ref = torch.nn.functional.silu(z + block.att(q, kv, kv)[0].transpose(1, 2).reshape(6, 32, 4, 4))
    assert torch.allclose(block(z, ctx), ref, atol=1e-5)


def test_set_context_length_keeps_the_last_frame_rows() -> None:
    tok = make_tokenizer()
    rows = {n: m.kv_pos_emb.detach().clone() for n, m in tok.named_modules() if isinstance(m, CrossAttentionBlock)}
    tok.set_context_length(1)
    assert tok.cfg.context_length == 1
    for n, m in tok.named_modules():
        if isinstance(m, CrossAttentionBlock):
            half = rows[n].shape[0] // 2
            assert torch.equal(m.kv_pos_emb, rows[n][half:])
    with torch.no_grad():  # and the tokenizer works with one context frame
        ids, _ = tok.encode_context(torch.rand(1, 1, 3, 32, 32))
        _, feats = tok.decode_context(ids)
        assert tok.decode_future(torch.zeros(1, 1, 16, dtype=torch.long), feats).shape == (1, 1, 3, 32, 32)


def diffusers_kwargs(cfg: TokenizerConfig, attention: bool) -> dict:
    return dict(
        in_channels=3,
        out_channels=cfg.latent_channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        act_fn="silu",
        mid_block_add_attention=attention,
    )


@pytest.mark.parametrize("attention", [False, True])
@torch.no_grad()
def test_plain_encoder_matches_diffusers(attention: bool) -> None:
    cfg = dataclasses.replace(small_config().tokenizer, mid_block_attention=attention)
    ours = Encoder(cfg).eval()
    perturb(ours)
    theirs = DiffusersEncoder(
        down_block_types=("DownEncoderBlock2D",) * len(cfg.block_out_channels),
        double_z=False,
        **diffusers_kwargs(cfg, attention),
    ).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(2, 3, cfg.resolution, cfg.resolution)
    assert (ours(x)[0] - theirs(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("attention", [False, True])
@torch.no_grad()
def test_plain_decoder_matches_diffusers(attention: bool) -> None:
    cfg = dataclasses.replace(small_config().tokenizer, mid_block_attention=attention)
    ours = Decoder(cfg).eval()
    perturb(ours)
    kwargs = diffusers_kwargs(cfg, attention)
    kwargs["in_channels"], kwargs["out_channels"] = cfg.latent_channels, 3
    theirs = DiffusersDecoder(up_block_types=("UpDecoderBlock2D",) * len(cfg.block_out_channels), **kwargs).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    z = torch.randn(2, cfg.latent_channels, cfg.latent_resolution, cfg.latent_resolution)
    assert (ours(z)[0] - theirs(z)).abs().max() <= 1e-5


# The conditional encoder/decoder have no diffusers counterpart (the cross-attention blocks are
# iVideoGPT's own); their stacks share the blocks compared above, and their cross-attention is
# compared against the published formula in test_cross_attention_matches_multihead_attention_reference.
