"""Your serving code: put a defense of the suite in front of your model.

    python serve.py my_teacher.pt

Loads the model as your server would, protects it with ASVP, answers a request, and shows that the
model itself is left exactly as it was once the protection is closed.
"""

from __future__ import annotations

import sys

import torch
from my_model import make_teacher
from skimage.data import astronaut

from bench.protect import protect

model = make_teacher()
if len(sys.argv) > 1:
    model.load_state_dict(torch.load(sys.argv[1], map_location="cpu", weights_only=True))
model.eval()
before = {k: v.clone() for k, v in model.state_dict().items()}

# a request of any size: inputs are padded to the model's size_multiple (4) and the answer cropped back
request = torch.from_numpy(astronaut()[100:201, 150:300] / 255.0).float().permute(2, 0, 1)[None]
with torch.no_grad():
    with protect(model, "none") as undefended:
        plain = undefended(request)
    with protect(model, "asvp", h=3.0) as served:           # layers=middle: from model.feature_layers
        answer = served(request)                            # what every user gets
        answer, features = served.forward_with_features(request)
        print(f"answer {tuple(answer.shape)}, perturbed layers {served.perturbed_layers}, "
              f"mean |change| {(answer - plain).abs().mean():.5f}")
unchanged = all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
print(f"after close: parameters and buffers unchanged: {unchanged}; hooks left: {hooks}")
