"""bf16 autocast with its matrix products emulated in fp32 agrees with the native bf16 kernels."""

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ivideogpt.emulated_bf16 import EmulatedBF16

BF16_ULP = 2**-8  # relative spacing of bf16 numbers


def _ops(g: torch.Generator) -> dict:
    x4 = torch.randn(2, 8, 12, 12, generator=g)
    w4, b = torch.randn(16, 8, 3, 3, generator=g), torch.randn(16, generator=g)
    x, w, bias = torch.randn(6, 32, generator=g), torch.randn(24, 32, generator=g), torch.randn(24, generator=g)
    q, k, v = (torch.randn(2, 4, 10, 16, generator=g) for _ in range(3))
    return {
        "conv2d": lambda: F.conv2d(x4, w4, b, padding=1),
        "linear": lambda: F.linear(x, w, bias),
        "matmul": lambda: x @ w.t(),
        "bmm": lambda: torch.bmm(q[0], k[0].transpose(1, 2)),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
    }


def test_products_round_like_native_bf16_and_unlike_fp32() -> None:
    g = torch.Generator().manual_seed(0)
    for name, op in _ops(g).items():
        fp32 = op()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            native = op()
            with EmulatedBF16("cpu"):
                emulated = op()
        assert emulated.dtype == native.dtype == torch.bfloat16, name
        scale = fp32.abs().max()
        # the same bf16 numbers up to the sums' order (one bf16 step at most) ...
        assert (emulated.float() - native.float()).abs().max() <= 2 * BF16_ULP * scale, name
        # (native attention also rounds its probabilities to bf16 between its two products)
        assert (emulated == native).float().mean() > (0.5 if name == "sdpa" else 0.9), name
        # ... and not fp32's: the operands were rounded to bf16 first
        assert not torch.equal(emulated.float(), fp32), name


def test_other_ops_keep_autocast_rules_and_a_trace_records_the_casts() -> None:
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 8, generator=g), torch.randn(8, 8, generator=g)

    def f(x: torch.Tensor, emulate: bool = True) -> tuple[torch.Tensor, ...]:
        with torch.autocast("cpu", dtype=torch.bfloat16), EmulatedBF16("cpu") if emulate else nullcontext():
            y = x @ w
            return F.group_norm(y[None], 2), y.softmax(-1), torch.cdist(y, y)

    assert [t.dtype for t in f(x)] == [t.dtype for t in f(x, emulate=False)] != [torch.bfloat16] * 3
    traced = torch.jit.trace(f, (x,))
    other = torch.randn(4, 8, generator=g)
    for a, b in zip(traced(other), f(other), strict=True):
        assert torch.equal(a, b)
