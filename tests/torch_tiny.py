"""A tiny plain ``torch.nn.Module`` factory on raw audio, for the tests: a strided 1-d convolution
whose (batch, 3, time) output and its time-averaged (batch, 4) projection are its two outputs."""

from __future__ import annotations

import torch


class TinyNet(torch.nn.Module):
    sample_rate = 8_000

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(1, 3, kernel_size=64, stride=32)
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        frames = torch.relu(self.conv(audio[:, None, :]))  # (batch, 3, time)
        return {"frames": frames, "embedding": self.fc(frames.mean(dim=2))}


def tiny_net() -> TinyNet:
    return TinyNet()
