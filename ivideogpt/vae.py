"""Convolutional encoder/decoder of the tokenizer, with the published module names.

The plain ``Encoder``/``Decoder`` follow diffusers' VAE blocks (so published weights load and
tests compare against diffusers); with ``conditional=True`` they become the future-frame
encoder/decoder of iVideoGPT, which cross-attend to the context frames' feature maps at every
stage whose resolution is at most ``max_att_resolution``. Both return their per-stage
feature lists, which is what the conditional modules attend to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivideogpt.config import TokenizerConfig

EPS = 1e-6


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=EPS)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample(nn.Module):
    """Stride-2 conv with diffusers' asymmetric (0, 1, 0, 1) padding."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual (diffusers' mid-block Attention)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.group_norm = group_norm(ch, groups)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.to_q(t)[:, None], self.to_k(t)[:, None], self.to_v(t)[:, None]
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
        return x + out


class DownBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n_layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(n_layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample(out_ch)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n_layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(n_layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, groups), ResnetBlock(ch, ch, groups)])
        self.attentions = nn.ModuleList([SelfAttention(ch, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class CrossAttentionBlock(nn.Module):
    """Queries from the current frame's map, keys/values from the context frames' maps.

    Context maps of ``t`` frames are stacked along height, both sides get learned position
    embeddings, and the activation comes after the residual add (as published). Keys and
    values are projected once per context and shared by every frame decoded against it.
    """

    def __init__(self, ch: int, resolution: int, context_frames: int, heads: int, groups: int, dropout: float):
        super().__init__()
        self.att = nn.MultiheadAttention(ch, heads, dropout=dropout, batch_first=True)
        self.kv_norm = group_norm(ch, groups)
        self.q_norm = group_norm(ch, groups)
        self.kv_pos_emb = nn.Parameter(torch.zeros(context_frames * resolution * resolution, ch))
        self.q_pos_emb = nn.Parameter(torch.zeros(resolution * resolution, ch))
        self.dropout = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """z [N, C, R, R]; context [B, t, C, R, R] with N a multiple of B (frames per context)."""
        n, c, r, _ = z.shape
        b, t = context.shape[:2]
        if n % b:
            raise ValueError(f"{n} frames cannot share {b} contexts")
        heads = self.att.num_heads
        wq, wk, wv = self.att.in_proj_weight.chunk(3)
        bq, bk, bv = self.att.in_proj_bias.chunk(3)

        kv = self.kv_norm(context.transpose(1, 2).reshape(b, c, t * r, r))
        kv = kv.flatten(2).transpose(1, 2) + self.kv_pos_emb  # [B, t*R*R, C]
        k = F.linear(kv, wk, bk).unflatten(2, (heads, -1)).transpose(1, 2)
        v = F.linear(kv, wv, bv).unflatten(2, (heads, -1)).transpose(1, 2)
        if n != b:
            k = k.repeat_interleave(n // b, dim=0)
            v = v.repeat_interleave(n // b, dim=0)

        q = self.q_norm(z).flatten(2).transpose(1, 2) + self.q_pos_emb  # [N, R*R, C]
        q = F.linear(q, wq, bq).unflatten(2, (heads, -1)).transpose(1, 2)
        p = self.att.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).flatten(2)
        out = self.dropout(self.att.out_proj(out)).transpose(1, 2).reshape(n, c, r, r)
        return F.silu(z + out)


class Encoder(nn.Module):
    """Frames -> latent map and the per-stage features [conv_in, down_0, ..., down_last, mid]."""

    def __init__(self, cfg: TokenizerConfig, conditional: bool = False):
        super().__init__()
        ch, groups = cfg.block_out_channels, cfg.norm_num_groups
        n = len(ch)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, groups, downsample=i < n - 1) for i in range(n)]
        )
        self.mid_block = MidBlock(ch[-1], groups, attention=conditional or cfg.mid_block_attention)
        self.conv_norm_out = group_norm(ch[-1], groups)
        self.conv_out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)

        # stage i (0-based) of the conditional encoder attends to context feature i + 1
        self.attended_stages: list[int] = []
        if conditional:
            for i in range(n):
                res = cfg.resolution // 2 ** min(i + 1, n - 1)
                if res <= cfg.max_att_resolution:
                    self.attended_stages.append(i)
            self.cross_att_blocks = nn.ModuleList(
                [
                    CrossAttentionBlock(
                        ch[i],
                        cfg.resolution // 2 ** min(i + 1, n - 1),
                        cfg.context_length,
                        cfg.cross_attn_heads,
                        groups,
                        cfg.cross_attn_dropout,
                    )
                    for i in self.attended_stages
                ]
            )

    def forward(
        self, x: torch.Tensor, context_features: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.conv_in(x)
        features = [x]
        att = 0
        for i, block in enumerate(self.down_blocks):
            x = block(x)
            if att < len(self.attended_stages) and self.attended_stages[att] == i:
                assert context_features is not None, "the conditional encoder needs context features"
                x = self.cross_att_blocks[att](x, context_features[i + 1])
                att += 1
            features.append(x)
        x = self.mid_block(x)
        features.append(x)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return x, features


class Decoder(nn.Module):
    """Latent map -> frame and the per-stage features [conv_in, mid, up_0, ..., up_last]."""

    def __init__(self, cfg: TokenizerConfig, conditional: bool = False):
        super().__init__()
        ch, groups = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        n = len(ch)
        latent_res = cfg.latent_resolution
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], groups, attention=conditional or cfg.mid_block_attention)
        self.up_blocks = nn.ModuleList(
            [UpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, groups, upsample=i < n - 1) for i in range(n)]
        )
        self.conv_norm_out = group_norm(ch[-1], groups)
        self.conv_out = nn.Conv2d(ch[-1], cfg.in_channels, 3, padding=1)

        # cross-attention after the mid block (feature 1) and after up stage i (feature i + 2),
        # wherever that stage's output is at most max_att_resolution
        self.attended_stages: list[int] = []  # -1 stands for the mid block
        if conditional:
            stage_res = {-1: latent_res} | {i: latent_res * 2 ** min(i + 1, n - 1) for i in range(n)}
            stage_ch = {-1: ch[0]} | dict(enumerate(ch))
            self.attended_stages = [s for s, r in stage_res.items() if r <= cfg.max_att_resolution]
            self.cross_att_blocks = nn.ModuleList(
                [
                    CrossAttentionBlock(
                        stage_ch[s],
                        stage_res[s],
                        cfg.context_length,
                        cfg.cross_attn_heads,
                        groups,
                        cfg.cross_attn_dropout,
                    )
                    for s in self.attended_stages
                ]
            )

    def _attend(self, stage: int, x: torch.Tensor, context_features: list[torch.Tensor] | None) -> torch.Tensor:
        if stage not in self.attended_stages:
            return x
        assert context_features is not None, "the conditional decoder needs context features"
        idx = self.attended_stages.index(stage)
        return self.cross_att_blocks[idx](x, context_features[stage + 2])

    def forward(
        self, z: torch.Tensor, context_features: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.conv_in(z)
        features = [x]
        x = self._attend(-1, self.mid_block(x), context_features)
        features.append(x)
        for i, block in enumerate(self.up_blocks):
            x = self._attend(i, block(x), context_features)
            features.append(x)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return x, features
