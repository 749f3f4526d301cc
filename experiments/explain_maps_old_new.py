"""Maps of the explain stage's candidates, gallery and test-split method, for an old/new code comparison.

    PYTHONPATH=OLD_TREE python experiments/explain_maps_old_new.py RUN OUT_OLD.npz
    PYTHONPATH=.        python experiments/explain_maps_old_new.py RUN OUT_NEW.npz

On a finished run: its gallery images (``maps/explain.npz``) and classes; for the layer-choice
member (``tables/layer_choice.json``) every (method, layer set) candidate of the choice, on the
model and on its randomized copy; for every member the gallery's CAM methods and the chosen
map. Each map is computed with the public ``gradcam`` (one explainer per map), so the old tree
runs its own path; the new tree's shared pass is checked by ``compare_layers``' own
``_candidate_maps`` when it exists.
"""

import json
import sys
import warnings

import numpy as np
import pandas as pd

from pneumoxai import explain
from pneumoxai.config import parse_config
from pneumoxai.data import load_images
from pneumoxai.explain import sanity
from pneumoxai.pipeline._common import run_members
from pneumoxai.run_folder import RunFolder

run_dir, out = sys.argv[1:3]
run = RunFolder(run_dir)
config = parse_config(json.load(open(f"{run_dir}/config.json")))
members = {m.name: m.load() for m in run_members(run, config) if m.is_model}
choice = json.load(open(f"{run_dir}/tables/layer_choice.json"))
gallery = np.load(f"{run_dir}/maps/explain.npz")
paths = list(gallery["paths"])
predictions = pd.read_csv(f"{run_dir}/tables/predictions_test.csv").set_index("path")
record = json.load(open(f"{run_dir}/tables/ensemble.json"))
target = predictions.loc[paths, f"p[{record['primary']}]"].to_numpy() >= record["thresholds"][record["primary"]]
x = load_images(paths, 128, interpolation=config["data"]["interpolation"])
maps = {}
model = members[choice["member"]]
specs = explain.layer_candidates(model)
methods = ["gradcam", "layercam", "hirescam"]
with explain.shared_models():
    for spec in specs:
        names = sanity._layers_to_randomize("x", model, "downstream", spec)
        copy = sanity._randomized_copy(model, names, 0)
        for method in methods:
            key = f"{method}|{'+'.join(spec)}"
            maps[f"choice|{key}"] = explain.gradcam(model, x, method=method, layers=spec, target=target)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                maps[f"randomized|{key}"] = explain.gradcam(copy, x, method=method, layers=spec, target=target)
    for name, member in members.items():
        for method, layers in (("gradcam", None), ("layercam", explain.fusion_layers(member)),
                               ("hirescam", explain.fusion_layers(member)),
                               (choice["method"], explain.chosen_layers(member, choice))):
            maps[f"member|{name}|{method}|{layers}"] = explain.gradcam(member, x, method=method, layers=layers,
                                                                      target=target)
np.savez(out, **maps)
