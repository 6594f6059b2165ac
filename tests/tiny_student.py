"""A backbone stand-in for method tests: a linear map with BatchNorm, embed_dim like the real backbones."""
from torch import nn


class TinyStudent(nn.Module):
    def __init__(self, d_in=12, d=6):
        super().__init__()
        self.embed_dim = d
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d_in, d), nn.BatchNorm1d(d))

    def forward(self, x):
        return self.net(x)
