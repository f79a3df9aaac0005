"""End to end on a task a tiny model learns in seconds: trained with ``given_views`` (loss) and
sampled with a given view (sampler), the generated view follows the given one.

The data: two pixel-aligned views, the second the negative of the first (as image and depth
are aligned), each a smooth random field. What this guards is the agreement between how
training shows a given view and how the sampler feeds it: a model trained *only* on given views
at σ = 0 (condition_prob 1), then sampled with the released pipeline's smallest-σ label for
them, came out no closer to its target than a random field (MSE 1.59 against a variance of
1.50) while the same model with the views labelled σ = 0 reached 0.20. Training at
condition_prob 0.5 sees both and works either way. The conditional mapping appears abruptly:
at lr 1e-3 its MSE was 1.23 after 700 steps and 0.15 after 1000.
"""

import torch
import torch.nn.functional as F

from model.loss import flow_matching_loss, given_views, sample_sigmas
from model.nextdit import NextDiT
from model.sampler import Conditioning, sample

SIZE = 8  # latent rows and columns: 16 tokens a view


def pairs(n: int, g: torch.Generator) -> torch.Tensor:
    field = F.interpolate(torch.randn(n, 16, 2, 2, generator=g), size=(SIZE, SIZE), mode="bilinear") * 1.5
    return torch.stack([field, -field], dim=1)


def test_a_trained_model_follows_its_given_view():
    torch.manual_seed(0)
    model = NextDiT("tiny")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    text, mask = torch.zeros(16, 4, 32), torch.ones(16, 4, dtype=torch.bool)
    for _ in range(700):
        x = pairs(16, g)
        loss, _ = flow_matching_loss(model, x, text, mask, sample_sigmas((16, 2), g, shift=1.0),
                                     torch.randn(x.shape, generator=g), given_views((16, 2), 0.5, g))
        opt.zero_grad()
        loss.backward()
        opt.step()

    x = pairs(32, torch.Generator().manual_seed(99))
    cond = Conditioning(torch.zeros(32, 4, 32), torch.ones(32, 4, dtype=torch.bool))
    model.eval()
    with torch.no_grad():
        for target, start in ((1, [0.0, 1.0]), (0, [1.0, 0.0])):  # either view generated from the other
            out = sample(lambda v, t, c: model(v, t, c.embeds, c.mask), x, start, cond, steps=30, cfg_scale=1.0,
                         generator=torch.Generator().manual_seed(5))
            own = (out[:, target] - x[:, target]).pow(2).mean().item()
            other = (out[:, target] - x.roll(1, 0)[:, target]).pow(2).mean().item()
            print(f"view {target} from the other: MSE to its target {own:.3f}, to another sample's {other:.3f}, "
                  f"variance {x[:, target].var().item():.3f}")
            assert own < 0.25 * other and own < 0.3 * x[:, target].var().item()
