"""Stage `visualize`: seeing inside the baseline model (paper 1 §II–III, paper 2, paper 3 §3.1).

    python -m stages.visualize --dataset fashion_mnist --model data/models/fashion_mnist/seeds/0/baseline.pt \
        --data data/raw/fashion_mnist --figures reports/figures/fashion_mnist/visualize \
        --recon data/visualize/fashion_mnist/reconstructions.npz \
        --metrics reports/metrics/fashion_mnist/visualize.json

Figures: paper 1 Fig 2–8 (deconvnet projections of every kernel of the first two
conv layers, one map across many images, Grad-CAM first vs last layer, Guided
Grad-CAM), the randomization test, class sensitivity and deletion/insertion
faithfulness; paper 2 activation maximization and inversion; paper 3 §3.1 one
layer's activations as a grid, a 3D volume (the volume itself: --volume, NRRD), k-means and PCA.

``--recon`` holds the per-kernel reconstructions of every conv layer for the
probe images (read by the similarity stage): ``layers`` (conv layer names),
``recon_<i>`` float16 [N_probe, K_i, C, H, W], ``probe_labels``, ``probe_indices``
(int64, into the test split).
"""

from __future__ import annotations

from itertools import chain

from cnnvis import ConfigError
from cnnvis.activations import ActivationsConfig
from cnnvis.attribution import VisualizeConfig
from cnnvis.data import load_npz
from cnnvis.io import save_figures, save_json, save_npz, save_volume
from cnnvis.models import load_checkpoint
from cnnvis.studies.visualize import visualize_study
from cnnvis.synthesis import SynthesisConfig
from stages._runner import Context, Input, Output, Stage


def run(ctx: Context) -> dict:
    from cnnvis.plotting.activations import activation_figures
    from cnnvis.plotting.attribution import attribution_figures
    from cnnvis.plotting.synthesis import synthesis_figures

    (model, state), raw = ctx.inputs["model"], ctx.inputs["data"]
    if list(raw.classes) != list(state["spec"]["classes"]):
        raise ConfigError(f"{ctx.path('model')}: trained on classes {state['spec']['classes'][:3]}…, but "
                          f"{ctx.path('data')} has {list(raw.classes)[:3]}…; pass the checkpoint of this dataset")
    study = visualize_study(model, state["spec"], raw.test, ctx.section("visualize"), ctx.section("synthesis"),
                            ctx.section("activations"))
    return {"figures": chain(attribution_figures(study.attribution), synthesis_figures(study.synthesis),
                             activation_figures(study.synthesis.activations)),
            "recon": study.attribution.recon.arrays(), "volume": study.synthesis.activations,
            "metrics": study.metrics(dataset=ctx.dataset, checkpoint=str(ctx.path("model")),
                                     test_top1=state.get("test_top1"))}


STAGE = Stage(
    "visualize", __doc__, run,
    params={"visualize": VisualizeConfig, "synthesis": SynthesisConfig, "activations": ActivationsConfig},
    inputs={"model": Input(load_checkpoint, "baseline checkpoint", made_by="train-baseline"),
            "data": Input(load_npz, "data/raw/<dataset> (its test split is used)", made_by="download")},
    outputs={"figures": Output(save_figures, directory=True, help="directory of this stage's figures"),
             "volume": Output(save_volume, help="paper 3's activation volume (NRRD)"),
             "recon": Output(save_npz, help="npz of the per-kernel reconstructions (uncompressed)"),
             "metrics": Output(save_json)},
)
main = STAGE.main

if __name__ == "__main__":
    main()
