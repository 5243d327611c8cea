"""Stage `similarity`: pHash similarity of the deconvnet reconstructions of every conv layer (paper 1 §IV).

    python -m stages.similarity --dataset fashion_mnist \
        --recon data/visualize/fashion_mnist/reconstructions.npz \
        --metrics reports/metrics/fashion_mnist/similarity.json \
        --arrays data/similarity/fashion_mnist/similarity.npz \
        --figures reports/figures/fashion_mnist/similarity

Figures (paper 1): Fig 9 (first conv layer's maps), Fig 10 (its similarity
matrix), Fig 11a (its maps with duplicate groups outlined), Fig 11b (last conv
layer's maps, groups outlined), Fig 12 (its matrix); and one maps + one matrix
figure per conv layer.
"""

from __future__ import annotations

from cnnvis.io import load_npz_arrays, save_figures, save_json, save_npz
from cnnvis.similarity import SimilarityConfig
from cnnvis.studies.similarity import Reconstructions, similarity_study
from stages._runner import Context, Input, Output, Stage


def run(ctx: Context) -> dict:
    from cnnvis.plotting.similarity import layer_figures

    study = similarity_study(ctx.inputs["recon"], ctx.section("similarity"))
    labels = study.probe["labels"]
    probe = f"probe image 0, class {labels[0]}" if labels else "probe image 0"
    last = len(study.layers) - 1
    paper = {0: {"maps": "p1_fig09", "groups": "p1_fig11a", "matrix": "p1_fig10"},
             last: {"groups": "p1_fig11b", "matrix": "p1_fig12"}}
    return {"metrics": study.metrics(ctx.dataset), "arrays": study.arrays(),
            "figures": layer_figures(study.layers, study.config, probe_label=probe, model_tag="baseline", paper=paper)}


STAGE = Stage(
    "similarity", __doc__, run,
    params={"similarity": SimilarityConfig},
    inputs={"recon": Input(lambda p: Reconstructions.from_arrays(load_npz_arrays(p)),
                           "reconstructions.npz of the visualize stage", made_by="visualize")},
    outputs={"metrics": Output(save_json), "arrays": Output(lambda p, a: save_npz(p, a, compressed=True),
                                                            help="npz of the similarity matrices and fingerprints"),
             "figures": Output(save_figures, directory=True, help="directory of this stage's figures")},
)
main = STAGE.main

if __name__ == "__main__":
    main()
