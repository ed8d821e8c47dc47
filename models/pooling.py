"""LeNet's 2x2 max-pooling on the CPU, computed with elementwise maxima: the same values and gradients, faster.

PyTorch's CPU ``max_pool2d`` walks each window in scalar code and writes an int64 index per
output; for the chapter's 2x2, stride-2 windows that costs 10-20x an elementwise pass over the
same tensor, and it was the largest single item in a training step on the CPU. Here the four
corners of every window are strided views of the input and the maximum is three
``torch.maximum`` calls, which are exact (a maximum rounds nothing). The backward computes the
index ``max_pool2d`` would have saved, the first maximal element of each window in row-major
order, from the rows' maxima in a few byte-wide passes, and hands it to PyTorch's own backward
kernel; so ties (common: Fashion-MNIST's flat black background gives equal activations side by
side) get the same gradient as PyTorch's, bit for bit, signed zeros included.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["MaxPool2d", "max_pool_2x2"]


def _corners(X: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Views of each 2x2 window's top-left, top-right, bottom-left and bottom-right elements."""
    N, C, H, W = X.shape
    windows = X.view(N, C, H // 2, 2, W // 2, 2)
    return windows[:, :, :, 0, :, 0], windows[:, :, :, 0, :, 1], windows[:, :, :, 1, :, 0], windows[:, :, :, 1, :, 1]


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, X: Tensor) -> Tensor:
        X = X.contiguous()
        top_left, top_right, bottom_left, bottom_right = _corners(X)
        top = torch.maximum(top_left, top_right)  # (N, C, H/2, W/2)
        bottom = torch.maximum(bottom_left, bottom_right)
        ctx.save_for_backward(X, top, bottom)
        return torch.maximum(top, bottom)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        X, top, bottom = ctx.saved_tensors
        # PyTorch's own backward kernel scatters each gradient to its index (and leaves +0.0
        # elsewhere, as ``max_pool2d`` does); only the index is computed here.
        return cast(Tensor, torch.ops.aten.max_pool2d_with_indices_backward(
            grad, X, [2, 2], [2, 2], [0, 0], [1, 1], False, _first_maximum_index(X, top, bottom)))


def _first_maximum_index(X: Tensor, top: Tensor, bottom: Tensor) -> Tensor:
    """``max_pool2d``'s saved index (``h * W + w`` within each plane, int64) of every window's first
    maximum in row-major order, from the window rows' maxima ``top`` and ``bottom``.

    The top row wins a tie with the bottom row; within a row, the left element wins unless it is
    below the row's maximum. The code of the winner within its window (0, 1, W or W + 1) is
    computed in bytes where it fits, since each elementwise pass costs by the byte.
    """
    N, C, H, W = X.shape
    top_left, _, bottom_left, _ = _corners(X)
    small = torch.uint8 if W + 1 <= torch.iinfo(torch.uint8).max else torch.int64
    bottom_wins, right_in_top, right_in_bottom = (
        mask.view(small) if small == torch.uint8 else mask.to(small)
        for mask in (bottom > top, top_left != top, bottom_left != bottom))
    code = right_in_top + bottom_wins * (right_in_bottom + W - right_in_top)
    window_start = torch.arange(0, H, 2, device=X.device).view(-1, 1) * W + torch.arange(0, W, 2, device=X.device)
    return window_start + code


def max_pool_2x2(X: Tensor) -> Tensor:
    """``F.max_pool2d(X, 2, 2)``: on the CPU, for ``(N, C, H, W)`` with even H and W, by elementwise maxima.

    Elsewhere PyTorch's kernel: on a GPU it is one launch each way where this is three forward
    and about nine backward, and launches are what a network this small waits on there. Under
    ``torch.compile`` and ``torch.export`` too: the compiler makes its own kernel of it, and an
    exported model keeps the standard ``MaxPool`` operator (ONNX, pt2).
    """
    if (X.device.type != "cpu" or X.dim() != 4 or X.shape[2] % 2 or X.shape[3] % 2
            or torch.compiler.is_compiling()):
        return cast(Tensor, F.max_pool2d(X, 2, 2))
    return cast(Tensor, _MaxPool2x2.apply(X))


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that takes the elementwise path for 2x2 windows with stride 2 (LeNet's)."""

    def forward(self, input: Tensor) -> Tensor:
        if (
            self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2)) and self.padding in (0, (0, 0))
            and self.dilation in (1, (1, 1)) and not self.ceil_mode and not self.return_indices
        ):
            return max_pool_2x2(input)
        return cast(Tensor, super().forward(input))
