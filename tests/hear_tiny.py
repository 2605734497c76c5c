"""A tiny model implementing the HEAR 2021 API, for the tests (no download, a few hundred weights).

Timestamp embeddings: log band energies of 50 ms frames (25 ms hop) through a fixed linear layer,
(sound, timestamp, 6); the scene embedding: their mean and standard deviation over time, (sound, 12).
"""

from __future__ import annotations

import torch

SAMPLE_RATE = 16_000
FRAME, HOP, BANDS, DIM = 800, 400, 8, 6


class TinyHear(torch.nn.Module):
    sample_rate = SAMPLE_RATE
    scene_embedding_size = 2 * DIM
    timestamp_embedding_size = DIM

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(BANDS, DIM)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(DIM, BANDS, generator=generator))
            self.proj.bias.zero_()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = audio.unfold(1, FRAME, HOP)  # (sound, timestamp, FRAME)
        power = torch.fft.rfft(frames * torch.hann_window(FRAME), dim=-1).abs() ** 2
        bands = torch.stack([b.sum(-1) for b in torch.tensor_split(power, BANDS, dim=-1)], dim=-1)
        return self.proj(torch.log(bands + 1e-6))


def load_model(model_file_path: str = "") -> TinyHear:
    model = TinyHear()
    if model_file_path:
        model.load_state_dict(torch.load(model_file_path, weights_only=True))
    return model.eval()


def get_timestamp_embeddings(audio: torch.Tensor, model: TinyHear) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings = model(audio)
    timestamps = (torch.arange(embeddings.shape[1]) * HOP + FRAME / 2) / SAMPLE_RATE * 1000.0  # ms
    return embeddings, timestamps.expand(audio.shape[0], -1)


def get_scene_embeddings(audio: torch.Tensor, model: TinyHear) -> torch.Tensor:
    embeddings = model(audio)
    return torch.cat([embeddings.mean(dim=1), embeddings.std(dim=1)], dim=1)
