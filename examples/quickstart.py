"""The README's example: train any PyTorch network with Alrao instead of choosing a learning rate."""

import torch
from torch import nn

import alrao_rl

torch.manual_seed(0)
# Any network, split into a body (everything before the output layer) and the output layer.
body = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
model = alrao_rl.AlraoModel(body, head=nn.Linear(64, 3), n_heads=10, task="classification")
opt = alrao_rl.AlraoSGD(model, eta_min=1e-5, eta_max=10.0, seed=0)  # one rate per unit, no lr to pick
step = alrao_rl.AlraoStep(model, opt)  # the fused training step

gen = torch.Generator().manual_seed(0)
teacher = torch.randn(20, 3, generator=gen)
for _step in range(2000):
    x = torch.randn(64, 20, generator=gen)
    y = (x @ teacher).argmax(dim=1)
    result = step(x, y)  # Algorithm 1: body on the mixture's gradient, head j on its own; switch update

x = torch.randn(1000, 20, generator=gen)
accuracy = (model.predict(x).argmax(dim=1) == (x @ teacher).argmax(dim=1)).float().mean()
print(f"loss {result.loss:.3f}, accuracy {accuracy:.3f}, head weights {model.switch.posterior.numpy().round(2)}")
